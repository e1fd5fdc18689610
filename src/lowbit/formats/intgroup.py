"""Integer codes with per-channel or per-group scales, and a zero-point when asymmetric.

Stored tensors for a weight of shape [N, K] (N outputs, K inputs), G = K / group_size (G = 1 per channel):

- ``qweight`` [N, K * bits / 8]: codes packed along K into a little-endian bit stream, lowest bits first.
  bits 4: element 2j in the low nibble of byte j and 2j+1 in the high nibble; bits 2: four per byte, element
  4j in bits 0-1; bits 3: each run of 8 codes fills 3 bytes (code i at bits 3i..3i+2 of their 24-bit
  little-endian word), so K must be a multiple of 8. Asymmetric: unsigned codes q in [0, 2**bits), uint8
  storage. Symmetric: signed codes c in [-(2**(bits-1) - 1), 2**(bits-1) - 1], two's complement; int8
  storage for 8 bits (so torch's int8 kernels use it as is), uint8 holding ``c & mask`` below 8 bits.
- ``scales``: [N, G] in ``scale_dtype``: by default float16 when grouped, float32 per channel.
- ``zeros`` [N, G], asymmetric only: uint8 integer zero-points (ZeroKind.INTEGER, as GPTQ/AWQ store them),
  or, with ``float_zero``, zero-points in the scales' dtype (ZeroKind.FLOAT, as HQQ stores them).
- ``g_idx`` [K] int32, only with ``g_idx=True``: the group of each input, for GPTQ's act-order results whose
  groups are not runs of consecutive inputs. Without it input j is in group j // group_size.

Decoding: asymmetric ``w = (q - z) * s``; symmetric ``w = c * s``.

Encoding (round to nearest): min/max grid per group (``lo = min(w, 0)``, ``hi = max(w, 0)``,
``s = (hi - lo) / qmax``, ``z = clamp(round(-lo / s), 0, qmax)``), or absmax when symmetric
(``s = max|w| / (2**(bits-1) - 1)``); scales are stored in ``scale_dtype``, all-zero groups get ``s = 1``. Codes:
integer zero-points ``round(w / s) + z``, float zero-points ``round(w / s + z)``, symmetric ``round(w / s)``,
clamped to the code range. Methods that choose their own grid (GPTQ, AWQ, HQQ) pass it to :meth:`IntFormat.encode`
or use :meth:`IntFormat.round_codes` and :meth:`IntFormat.pack`.
"""

from __future__ import annotations

import dataclasses

import torch

from lowbit.errors import FormatError
from lowbit.formats.base import WeightFormat, check_range, check_scales
from lowbit.qtypes import BY_BITS, QType, ZeroKind, for_bits

BITS = tuple(sorted(BY_BITS))
SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclasses.dataclass(frozen=True)
class IntFormat(WeightFormat, kind="int"):
    """What one integer-quantized weight stores: bit width, grouping, zero-point kind."""

    bits: int
    group_size: int | None  # None: one scale per output channel
    symmetric: bool
    float_zero: bool = False  # asymmetric only: zero-points are floats (HQQ) instead of integer codes
    g_idx: bool = False  # grouped only: a stored g_idx gives each input's group (GPTQ act-order)
    scale_dtype: torch.dtype | None = None  # None: float16 when grouped, float32 per channel (a name is accepted)

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise FormatError(f"IntFormat.bits={self.bits!r}; expected one of {list(BITS)}; choose a supported width")
        if self.symmetric and self.float_zero:
            raise FormatError("IntFormat(symmetric=True, float_zero=True): a symmetric grid has no zero-point; "
                              "pass float_zero=False or symmetric=False")
        if self.g_idx and self.group_size is None:
            raise FormatError("IntFormat(g_idx=True, group_size=None): g_idx needs groups and per-channel scales have "
                              "none; pass a group_size or g_idx=False")
        dtype = self.scale_dtype
        if dtype is None:
            dtype = self.default_scale_dtype
        elif isinstance(dtype, str):
            dtype = SCALE_DTYPES.get(dtype.removeprefix("torch."), dtype)
        if dtype not in SCALE_DTYPES.values():
            raise FormatError(f"IntFormat.scale_dtype={self.scale_dtype!r}; expected one of {list(SCALE_DTYPES)} or "
                              "None (float16 grouped, float32 per channel)")
        object.__setattr__(self, "scale_dtype", dtype)

    @property
    def qtype(self) -> QType:
        return for_bits(self.bits)

    @property
    def zero_kind(self) -> ZeroKind:
        if self.symmetric:
            return ZeroKind.NONE
        return ZeroKind.FLOAT if self.float_zero else ZeroKind.INTEGER

    @property
    def default_scale_dtype(self) -> torch.dtype:
        return torch.float32 if self.group_size is None else torch.float16

    @property
    def code_range(self) -> tuple[int, int]:
        """The smallest and largest code: signed ±(2**(bits-1) - 1) when symmetric, else 0..2**bits - 1."""
        if self.symmetric:
            top = self.qtype.midpoint - 1
            return -top, top
        return 0, self.qtype.qmax

    def groups(self, k: int) -> int:
        return 1 if self.group_size is None else k // self.group_size

    def describe(self) -> str:
        g = "per-channel" if self.group_size is None else f"g{self.group_size}"
        zero = {ZeroKind.NONE: "sym", ZeroKind.INTEGER: "asym", ZeroKind.FLOAT: "asym float-zero"}[self.zero_kind]
        scales = "" if self.scale_dtype == self.default_scale_dtype else f" {str(self.scale_dtype)[6:]} scales"
        return f"int{self.bits} {g} {zero}" + (" g_idx" if self.g_idx else "") + scales

    def expected_tensors(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        if k % 8:
            raise FormatError(f"a weight with {k} inputs cannot be stored as {self.describe()}: the packed layout "
                              "needs a multiple of 8 inputs; leave this layer unquantized (modules_to_not_convert)")
        g = self.groups(k)
        qdtype = torch.int8 if self.symmetric and self.bits == 8 else torch.uint8
        out = {"qweight": ((n, k * self.bits // 8), qdtype), "scales": ((n, g), self.scale_dtype)}
        if not self.symmetric:
            out["zeros"] = ((n, g), self.scale_dtype if self.float_zero else torch.uint8)
        if self.g_idx:
            out["g_idx"] = ((k,), torch.int32)
        return out

    # ---- encoding ---------------------------------------------------------------------------------------------
    def encode_rows(self, w: torch.Tensor, scales: torch.Tensor | None = None,
                    zeros: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Rows of ``w`` → codes on the given grid, or on the min/max (absmax) grid of each group."""
        if scales is None:
            scales, zeros = self.grid(w)
        return self.pack(self.codes(w, scales, zeros), scales, zeros)

    def encode_whole(self, tensors: dict[str, torch.Tensor], w: torch.Tensor) -> dict[str, torch.Tensor]:
        """A g_idx format encoded in input order: input j is in group j // group_size."""
        if self.g_idx and "g_idx" not in tensors:
            tensors = {**tensors, "g_idx": (torch.arange(w.shape[1]) // self.group_size).to(torch.int32)}
        return tensors

    def grid(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Round-to-nearest grid of ``w`` [N, K]: scales [N, G] in ``scale_dtype`` and uint8 zero-points [N, G]
        (None when symmetric), from each group's min/max (absmax when symmetric)."""
        n, k = w.shape
        g = w.float().reshape(n, self.groups(k), -1)
        if self.symmetric:
            return self.stored_scales(g.abs().amax(-1) / self.code_range[1]), None
        lo = g.amin(-1).clamp(max=0)
        hi = g.amax(-1).clamp(min=0)
        scales = self.stored_scales((hi - lo) / self.qtype.qmax)
        zeros = (-lo / scales.float()).round().clamp(0, self.qtype.qmax).to(torch.uint8)
        return scales, zeros

    def stored_scales(self, scales: torch.Tensor) -> torch.Tensor:
        """Scales in ``scale_dtype``. All-zero groups get scale 1 (codes at zero, no division by zero); tiny ones
        are raised to the dtype's smallest normal number, since subnormals would round the scale by up to 50% and
        put the group's extremes off the grid."""
        info = torch.finfo(self.scale_dtype)
        self.check_fits(scales)
        scales = torch.where(scales > 0, scales.clamp(min=info.tiny), torch.ones_like(scales))
        return scales.to(self.scale_dtype)

    def check_fits(self, scales: torch.Tensor) -> None:
        """Scales (float32) that ``scale_dtype`` cannot hold are an error, never a silent clamp to its largest."""
        top = torch.finfo(self.scale_dtype).max
        if scales.numel() and not bool(scales.abs().amax() < top):  # NaN fails too
            raise FormatError(f"the weights need scales up to {float(scales.abs().amax()):g}, beyond "
                              f"{str(self.scale_dtype)[6:]}'s largest {top:g}; expected weights within its range; "
                              "keep the layer unquantized (modules_to_not_convert) or fix the weights")

    def round_codes(self, q: torch.Tensor, zeros: torch.Tensor | None) -> torch.Tensor:
        """``q = w / s`` (float32, changed in place) → codes as floats, clamped to :attr:`code_range`.

        Integer zero-points: ``round(q) + z``; float zero-points (HQQ): ``round(q + z)``; symmetric: ``round(q)``.
        """
        if zeros is None:
            q = q.round_()
        elif self.float_zero:
            q = q.add_(zeros).round_()
        else:
            q = q.round_().add_(zeros)
        return q.clamp_(*self.code_range)

    def codes(self, w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None) -> torch.Tensor:
        """Round ``w`` [N, K] to the grid of ``scales`` (and ``zeros``) [N, G]: uint8 codes, int8 when symmetric."""
        groups = scales.shape[-1]
        q = _grouped(w.float(), groups) / scales.float()[..., None]
        q = self.round_codes(q, None if self.symmetric else zeros.float()[..., None])
        return q.to(torch.int8 if self.symmetric else torch.uint8).reshape(w.shape)

    def pack(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None = None,
             g_idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Codes [N, K], scales and zero-points [N, G] (and a g_idx [K]) → the stored tensors, in storage dtypes."""
        self.check_fits(scales.float())
        if self.float_zero:
            self.check_fits(zeros.float())
        out = {"qweight": pack_bits(codes, self.bits), "scales": scales.to(self.scale_dtype)}
        if not self.symmetric:
            out["zeros"] = zeros.to(self.scale_dtype if self.float_zero else torch.uint8)
        if g_idx is not None:
            out["g_idx"] = g_idx.to(torch.int32)
        return out

    def check(self, tensors: dict[str, torch.Tensor], own: bool = True) -> None:
        """Scales finite, positive, unsaturated; integer zero-points within 0..2**bits - 1, float ones finite;
        symmetric codes within ±(2**(bits-1) - 1) (the lowest code is never written); g_idx within the groups."""
        check_scales("scales", tensors["scales"], positive=own)
        if self.zero_kind is ZeroKind.INTEGER:
            check_range("zeros", tensors["zeros"], 0, self.qtype.qmax, "zero-points")
        elif self.zero_kind is ZeroKind.FLOAT:
            top = torch.finfo(self.scale_dtype).max
            check_range("zeros", tensors["zeros"], -top, top, "zero-points")
        if self.symmetric:
            check_range("qweight", lowest_codes(tensors["qweight"], self.bits), *self.code_range, "codes")
        if self.g_idx:
            check_range("g_idx", tensors["g_idx"], 0, tensors["scales"].shape[-1] - 1, "groups")

    # ---- decoding ---------------------------------------------------------------------------------------------
    def decode(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q = unpack_bits(tensors["qweight"], self.bits, signed=self.symmetric).float()
        scales = tensors["scales"]
        if self.g_idx:
            return self._dequantize_g_idx(q, tensors, dtype)
        q = _grouped(q, scales.shape[-1])
        if not self.symmetric:
            q = q - tensors["zeros"].float()[..., None]
        return (q * scales.float()[..., None]).reshape(q.shape[0], -1).to(dtype)

    def _dequantize_g_idx(self, q: torch.Tensor, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        g_idx, groups = tensors["g_idx"].long(), tensors["scales"].shape[-1]
        if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= groups):
            raise FormatError(f"g_idx holds groups {int(g_idx.min())}..{int(g_idx.max())}; expected 0..{groups - 1}; "
                              "the checkpoint is corrupt: re-quantize it")
        if not self.symmetric:
            q = q - tensors["zeros"].float()[:, g_idx]
        return (q * tensors["scales"].float()[:, g_idx]).to(dtype)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes [..., K] into [..., K * bits / 8] bytes as a little-endian bit stream, lowest bits first.

    Unsigned codes give uint8; signed codes (int8 input) are stored two's complement: int8 as is for
    8 bits, ``c & mask`` in uint8 below 8 bits.
    """
    if bits == 8:
        return codes.contiguous()
    codes = codes.view(torch.uint8) if codes.dtype in (torch.int8, torch.uint8) else codes.to(torch.uint8)
    codes = codes & ((1 << bits) - 1)  # signed codes keep their two's complement low bits
    if 8 % bits == 0:
        per = 8 // bits
        shaped = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
        out = shaped[..., 0].clone()
        for i in range(1, per):
            out |= shaped[..., i] << (bits * i)
        return out
    # runs of 8 codes → `bits` bytes of one little-endian word
    runs = codes.reshape(*codes.shape[:-1], -1, 8).to(torch.int32)
    word = runs[..., 0].clone()
    for i in range(1, 8):
        word |= runs[..., i] << (bits * i)
    out = torch.stack([(word >> (8 * j)) & 0xFF for j in range(bits)], dim=-1).to(torch.uint8)
    return out.reshape(*codes.shape[:-1], -1)


def unpack_bits(packed: torch.Tensor, bits: int, signed: bool = False) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: codes [..., B * 8 / bits], int8 when ``signed`` else uint8."""
    if bits == 8:
        return packed
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        parts = [(packed >> (bits * i)) & mask for i in range(8 // bits)]
        codes = torch.stack(parts, dim=-1).reshape(*packed.shape[:-1], -1)
    else:
        run = packed.reshape(*packed.shape[:-1], -1, bits).to(torch.int32)
        word = run[..., 0].clone()
        for j in range(1, bits):
            word |= run[..., j] << (8 * j)
        codes = torch.stack([(word >> (bits * i)) & mask for i in range(8)], dim=-1)
        codes = codes.reshape(*packed.shape[:-1], -1).to(torch.uint8)
    if signed:
        half = 1 << (bits - 1)
        codes = (codes.to(torch.int16) ^ half).sub_(half).to(torch.int8)
    return codes


def lowest_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The smallest signed code of each packed byte (of each 3-byte run at 3 bits): a cheap view for range checks."""
    if bits == 8:
        return packed.amin(-1) if packed.numel() else packed
    if bits == 4:  # a nibble n holds -8..7: the smaller of the two per byte
        return torch.minimum(((packed & 0xF) ^ 8).to(torch.int8) - 8, ((packed >> 4) ^ 8).to(torch.int8) - 8)
    return unpack_bits(packed, bits, signed=True)


def _grouped(t: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, K] → [N, G, K/G] view, to broadcast per-group [N, G, 1] values without copying them out."""
    return t.reshape(t.shape[0], groups, -1)
