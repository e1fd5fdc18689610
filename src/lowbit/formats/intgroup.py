"""Integer codes with per-channel or per-group scales, and a zero-point when asymmetric.

Stored tensors for a weight of shape [N, K] (N outputs, K inputs), G = K / group_size (G = 1 per channel):

- ``qweight`` [N, K * bits / 8]: codes packed along K into a little-endian bit stream, lowest bits first.
  bits 4: element 2j in the low nibble of byte j and 2j+1 in the high nibble; bits 2: four per byte, element
  4j in bits 0-1; bits 3: each run of 8 codes fills 3 bytes (code i at bits 3i..3i+2 of their 24-bit
  little-endian word), so K must be a multiple of 8. Asymmetric: unsigned codes q in [0, 2**bits), uint8
  storage. Symmetric: signed codes c in [-(2**(bits-1) - 1), 2**(bits-1) - 1], two's complement; int8
  storage for 8 bits (so torch's int8 kernels use it as is), uint8 holding ``c & mask`` below 8 bits.
- ``scales``: [N, G], float16 when grouped, float32 per channel.
- ``zeros`` [N, G], asymmetric only: uint8 integer zero-points (ZeroKind.INTEGER, as GPTQ/AWQ store them),
  or, with ``float_zero``, zero-points in the scales' dtype (ZeroKind.FLOAT, as HQQ stores them).
- ``g_idx`` [K] int32, only with ``g_idx=True``: the group of each input, for GPTQ's act-order results whose
  groups are not runs of consecutive inputs. Without it input j is in group j // group_size.

Dequantization: asymmetric ``w = (q - z) * s``; symmetric ``w = c * s``.
"""

from __future__ import annotations

import dataclasses

import torch

from lowbit.errors import FormatError
from lowbit.formats.base import WeightFormat
from lowbit.qtypes import QType, ZeroKind, for_bits

BITS = (2, 3, 4, 8)


@dataclasses.dataclass(frozen=True)
class IntFormat(WeightFormat, kind="int"):
    """What one integer-quantized weight stores: bit width, grouping, zero-point kind."""

    bits: int
    group_size: int | None  # None: one scale per output channel
    symmetric: bool
    float_zero: bool = False  # asymmetric only: zero-points are floats (HQQ) instead of integer codes
    g_idx: bool = False  # grouped only: a stored g_idx gives each input's group (GPTQ act-order)

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"IntFormat.bits={self.bits}; expected one of {BITS}")
        if self.symmetric and self.float_zero:
            raise ValueError("IntFormat: a symmetric grid has no zero-point, float_zero must be False")
        if self.g_idx and self.group_size is None:
            raise ValueError("IntFormat: g_idx needs groups; per-channel scales have none")

    @property
    def qtype(self) -> QType:
        return for_bits(self.bits)

    @property
    def zero_kind(self) -> ZeroKind:
        if self.symmetric:
            return ZeroKind.NONE
        return ZeroKind.FLOAT if self.float_zero else ZeroKind.INTEGER

    @property
    def scale_dtype(self) -> torch.dtype:
        return torch.float32 if self.group_size is None else torch.float16

    def groups(self, k: int) -> int:
        return 1 if self.group_size is None else k // self.group_size

    def describe(self) -> str:
        g = "per-channel" if self.group_size is None else f"g{self.group_size}"
        zero = {ZeroKind.NONE: "sym", ZeroKind.INTEGER: "asym", ZeroKind.FLOAT: "asym float-zero"}[self.zero_kind]
        return f"int{self.bits} {g} {zero}" + (" g_idx" if self.g_idx else "")

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

    def dequantize(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
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


def _grouped(t: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, K] → [N, G, K/G] view, to broadcast per-group [N, G, 1] values without copying them out."""
    return t.reshape(t.shape[0], groups, -1)


def quantize_to_codes(w: torch.Tensor, fmt: IntFormat, scales: torch.Tensor, zeros: torch.Tensor | None) -> torch.Tensor:
    """Round ``w`` [N, K] to the grid given by ``scales`` (and ``zeros``): uint8 codes, or int8 when symmetric.

    Integer zero-points: ``round(w / s) + z``; float zero-points (HQQ): ``round(w / s + z)``.
    """
    groups = scales.shape[-1]
    q = _grouped(w.float(), groups) / scales.float()[..., None]
    if fmt.symmetric:
        top = fmt.qtype.midpoint - 1
        return q.round_().clamp_(-top, top).to(torch.int8).reshape(w.shape)
    z = zeros.float()[..., None]
    q = q.add_(z).round_() if fmt.float_zero else q.round_().add_(z)
    q = q.clamp_(0, fmt.qtype.qmax)
    return q.to(torch.uint8).reshape(w.shape)
