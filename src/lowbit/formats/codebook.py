"""4-bit code books with an absmax scale per block: NF4 (bitsandbytes' layout) and OCP FP4 (E2M1).

Stored tensors for a weight of shape [N, K] (N outputs, K inputs), G = K / absmax_block:

- ``qweight`` [N, K/2] uint8: two 4-bit codes per byte along K. ``nf4`` and ``bnb_fp4`` (bitsandbytes' own
  "fp4" code book, not E2M1; read from bitsandbytes checkpoints): the first element of each pair in
  the HIGH nibble, as bitsandbytes packs it (``quantize_4bit(..., quant_type="nf4")`` gives these bytes
  for a K that is a multiple of the block, flattened to [N*K/2, 1]). ``fp4``: the first element in the LOW
  nibble (OCP / torch ``float4_e2m1fn_x2``); the codes are E2M1 bit patterns (bit 3 sign).
- ``absmax`` [N, G]: the largest |w| of each block of ``absmax_block`` consecutive inputs, float32; or, with
  ``double_quant``, uint8 indices into bitsandbytes' signed 8-bit dynamic map (:func:`dynamic_map`) plus
- ``absmax_scale`` [ceil(N*G/256)] float32: the absmax of each run of 256 centred absmax values (row-major
  flattened [N*G]; the last run may be short), and ``absmax_offset`` [1] float32: the mean of all absmax values.

The code books (values, largest magnitude L, nibble order, rounding rule) are ``lowbit.qtypes.nf4`` and
``lowbit.qtypes.fp4_e2m1``. Decoding: ``absmax = dynamic_map[code] * absmax_scale[i // 256] + absmax_offset``
(double-quant only), then ``w = value[code] * absmax / L`` with L = 1 for nf4 (values in [-1, 1]) and L = 6 for fp4
(E2M1 grid, max 6). Encoding: ``x = w * (L / absmax)`` in fp32, then the nearest code; nf4 ties go to the lower code
(as bitsandbytes' midpoint search), fp4 ties to the even mantissa (IEEE round-half-even).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from lowbit.errors import FormatError
from lowbit.formats.base import WeightFormat, check_range
from lowbit.qtypes import CODE_BOOKS, CodeBook, Rounding, code_book, fp4_e2m1

DQ_BLOCK = 256  # double quantization: absmax values per second-level scale (bitsandbytes' choice)
E2M1_MAGNITUDES = fp4_e2m1.values[:8]  # codes 0..7: the non-negative E2M1 values
_TINY = 1e-38  # absmax floor before taking a reciprocal (bitsandbytes' clamp): all-zero blocks give codes of 0


@dataclasses.dataclass(frozen=True)
class CodebookFormat(WeightFormat, kind="codebook"):
    """What one code-book-quantized weight stores: the code book, the inputs per absmax, double quantization."""

    code: CodeBook  # lowbit.qtypes.nf4, fp4_e2m1 or bnb_fp4; its name ("nf4", "fp4", "bnb_fp4") is accepted too
    absmax_block: int  # consecutive inputs sharing one absmax (the config's block_size)
    double_quant: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.code, CodeBook) and self.code not in CODE_BOOKS:
            raise FormatError(f"CodebookFormat.code={self.code!r}; expected one of {sorted(CODE_BOOKS)}")
        object.__setattr__(self, "code", code_book(self.code))
        if self.absmax_block < 1 or self.absmax_block & (self.absmax_block - 1):
            raise FormatError(f"CodebookFormat.absmax_block={self.absmax_block}; expected a power of two such as 64")

    def describe(self) -> str:
        stats = "absmax 8-bit double-quant" if self.double_quant else "absmax fp32"
        return f"{self.code} b{self.absmax_block} {stats}"

    def check_inputs(self, k: int) -> None:
        if k % 2:
            raise FormatError(f"a weight with {k} inputs cannot be stored as {self.describe()}: two 4-bit codes share "
                              "a byte, so it needs an even number of inputs; leave the layer unquantized "
                              "(modules_to_not_convert)")
        if k % self.absmax_block:
            raise FormatError(f"a weight with {k} inputs cannot be stored as {self.describe()}: blocks need a multiple "
                              f"of {self.absmax_block} inputs; choose a block size that divides {k} or leave the layer "
                              "unquantized (modules_to_not_convert)")

    def expected_tensors(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        self.check_inputs(k)
        g = k // self.absmax_block
        out = {"qweight": ((n, k // 2), torch.uint8)}
        if not self.double_quant:
            out["absmax"] = ((n, g), torch.float32)
            return out
        out["absmax"] = ((n, g), torch.uint8)
        out["absmax_scale"] = ((math.ceil(n * g / DQ_BLOCK),), torch.float32)
        out["absmax_offset"] = ((1,), torch.float32)
        return out

    def check(self, tensors: dict[str, torch.Tensor], own: bool = True) -> None:
        """absmax values (or the double-quantized statistics) finite and not negative. Every 4-bit code and every
        8-bit absmax code names a value of its book, so the codes need no check."""
        top = torch.finfo(torch.float32).max
        if not self.double_quant:
            check_range("absmax", tensors["absmax"], 0, top, "absmax values")
            return
        check_range("absmax_scale", tensors["absmax_scale"], 0, top, "second-level scales")
        check_range("absmax_offset", tensors["absmax_offset"], 0, top, "absmax offsets")

    def absmax(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fp32 absmax [N, G], undoing double quantization if used."""
        if not self.double_quant:
            return tensors["absmax"].float()
        return dequantize_absmax(tensors["absmax"], tensors["absmax_scale"], tensors["absmax_offset"])

    def encode_rows(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows → packed codes and their fp32 absmax (double quantization happens on the whole, below)."""
        n, k = w.shape
        book = self.code
        x = w.float().reshape(n, k // self.absmax_block, self.absmax_block)
        absmax = x.abs().amax(dim=-1)
        # bitsandbytes multiplies by the fp32 reciprocal; fp4 maps absmax onto the grid's 6
        x = x * (book.levels / absmax.clamp(min=_TINY * book.levels))[..., None]
        codes = nearest_codes(x, book)
        return {"qweight": pack_nibbles(codes.view(n, k), book.high_first), "absmax": absmax}

    def encode_whole(self, tensors: dict[str, torch.Tensor], w: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.double_quant:
            return tensors
        codes, scales, offset = quantize_absmax(tensors["absmax"])
        return {"qweight": tensors["qweight"], "absmax": codes, "absmax_scale": scales, "absmax_offset": offset}

    def decode(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        packed = tensors["qweight"]
        n = packed.shape[0]
        codes = unpack_nibbles(packed, self.code.high_first)
        values = code_values(self.code, packed.device)[codes.int()]
        scale = self.absmax(tensors)
        if self.code.levels != 1:
            scale = scale / self.code.levels
        w = values.view(n, scale.shape[1], -1) * scale[..., None]
        return w.view(n, -1).to(dtype)


@functools.lru_cache(maxsize=16)
def code_values(book: CodeBook | str, device: torch.device) -> torch.Tensor:
    """The 16 values of a code book, float32, indexed by code."""
    return torch.tensor(code_book(book).values, dtype=torch.float32, device=device)


def nearest_codes(x: torch.Tensor, book: CodeBook) -> torch.Tensor:
    """x in code-book units (fp32; changed in place) → the nearest codes (uint8) by the book's rounding rule."""
    if book.rounding is Rounding.TIES_EVEN:
        return e2m1_codes(x)
    values, codes = _sorted(book.values, x.device)  # books whose codes are not in value order (bnb_fp4)
    idx = torch.bucketize(x.clamp_(-book.levels, book.levels), _midpoints(values, x.device), out_int32=True)
    return codes[idx]


@functools.lru_cache(maxsize=16)
def _sorted(values: tuple[float, ...], device: torch.device) -> tuple[tuple[float, ...], torch.Tensor]:
    """A code book's values in increasing order, and the code (uint8) of each sorted position."""
    order = sorted(range(len(values)), key=lambda c: values[c])
    return tuple(values[c] for c in order), torch.tensor(order, dtype=torch.uint8, device=device)


@functools.lru_cache(maxsize=16)
def _midpoints(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """Decision boundaries of a sorted code book, computed in fp32 as bitsandbytes does."""
    t = torch.tensor(values, dtype=torch.float32, device=device)
    return (t[:-1] + t[1:]) / 2


def pack_nibbles(codes: torch.Tensor, high_first: bool) -> torch.Tensor:
    """Codes [..., K] (values 0..15) → bytes [..., K/2]; element 2j goes to the high nibble when ``high_first``."""
    if codes.shape[-1] % 2:
        raise FormatError(f"cannot pack {codes.shape[-1]} 4-bit codes per row into bytes; expected an even number")
    pairs = codes.to(torch.uint8).reshape(*codes.shape[:-1], -1, 2)
    first, second = pairs[..., 0], pairs[..., 1]
    return (first << 4) | second if high_first else (second << 4) | first


def unpack_nibbles(packed: torch.Tensor, high_first: bool) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: bytes [..., B] → codes [..., 2B] uint8."""
    hi, lo = packed >> 4, packed & 0x0F
    first, second = (hi, lo) if high_first else (lo, hi)
    return torch.stack([first, second], dim=-1).reshape(*packed.shape[:-1], -1)


def e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """x in E2M1 units (fp32) → E2M1 bit patterns (uint8): nearest, ties to even mantissa, saturating at ±6.

    The sign bit follows ``x``'s sign bit (a negative value that rounds to 0 gives -0, code 8), as a float cast does.
    """
    mag = x.abs()
    mids = _midpoints(E2M1_MAGNITUDES, x.device)
    lo = torch.bucketize(mag, mids, out_int32=True)  # ties → lower magnitude
    hi = torch.bucketize(mag, mids, out_int32=True, right=True)  # ties → upper magnitude
    idx = torch.where(lo == hi, lo, lo + (lo & 1))  # on a tie, the even of (lo, lo + 1)
    return idx.to(torch.uint8) | (torch.signbit(x).to(torch.uint8) << 3)


# ---- double quantization of the absmax values (bitsandbytes' compress_statistics) ------------------------------------

@functools.lru_cache(maxsize=1)
def dynamic_map() -> torch.Tensor:
    """bitsandbytes' ``create_dynamic_map(signed=True)``: 256 sorted fp32 values in [-0.99297, 1].

    For i in 0..6, 2**i + 1 points ``linspace(0.1, 1)`` give 2**i interval midpoints, scaled by 10**(i - 6),
    each with its negative; plus 0 and 1. Index 127 is 0.0, index 255 is 1.0. Built with the same fp32
    torch operations as bitsandbytes, so the values are bit-identical.
    """
    data: list[float] = []
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


def quantize_absmax(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 absmax [N, G] → (uint8 codes [N, G], scales [ceil(N*G/256)], offset [1]); nearest code, ties lower."""
    flat = absmax.float().reshape(-1)
    offset = flat.mean()
    centred = flat - offset
    runs = math.ceil(flat.numel() / DQ_BLOCK)
    padded = torch.nn.functional.pad(centred, (0, runs * DQ_BLOCK - flat.numel())).view(runs, DQ_BLOCK)
    scales = padded.abs().amax(dim=1)
    normed = (padded * (1.0 / scales.clamp(min=_TINY))[:, None]).clamp_(-1, 1)
    dmap = dynamic_map().to(absmax.device)
    codes = torch.bucketize(normed, (dmap[:-1] + dmap[1:]) / 2, out_int32=True).to(torch.uint8)
    return codes.view(-1)[: flat.numel()].view(absmax.shape), scales, offset.reshape(1)


def dequantize_absmax(codes: torch.Tensor, scales: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`quantize_absmax`: ``dynamic_map[code] * scale[run] + offset``, fp32 [N, G]."""
    values = dynamic_map().to(codes.device)[codes.reshape(-1).int()]
    per = scales.float().repeat_interleave(DQ_BLOCK)[: values.numel()]
    return (values * per + offset.float()).view(codes.shape)
