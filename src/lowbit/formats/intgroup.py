"""Integer codes with per-channel or per-group scales (and integer zero-points when asymmetric).

Stored tensors for a weight of shape [N, K] (N outputs, K inputs), G = K / group_size (G = 1 per channel):

- ``qweight`` [N, K * bits / 8], packed along K, lowest bits first (bits 4: element 2j in the low nibble of
  byte j, element 2j+1 in the high nibble). Asymmetric: unsigned codes q in [0, 2**bits), uint8 storage.
  Symmetric: signed codes c in [-2**(bits-1), 2**(bits-1)), two's complement; int8 storage for 8 bits
  (so torch's int8 kernels use it as is), uint8 holding ``c & mask`` below 8 bits.
- ``scales``: [N, G], float16 when grouped, float32 per channel.
- ``zeros``: uint8 [N, G] integer zero-points, only when asymmetric.

Dequantization: asymmetric ``w = (q - z) * s`` (ZeroKind.INTEGER); symmetric ``w = c * s`` (ZeroKind.NONE).
Symmetric codes use [-(2**(bits-1) - 1), 2**(bits-1) - 1], so the grid is symmetric about zero.
"""

from __future__ import annotations

import dataclasses

import torch

from lowbit.qtypes import QType, ZeroKind, for_bits


@dataclasses.dataclass(frozen=True)
class IntSpec:
    """What one quantized weight stores: bit width, grouping, zero kind."""

    bits: int
    group_size: int | None  # None: one scale per output channel
    symmetric: bool

    @property
    def qtype(self) -> QType:
        return for_bits(self.bits)

    @property
    def zero_kind(self) -> ZeroKind:
        return ZeroKind.NONE if self.symmetric else ZeroKind.INTEGER

    @property
    def scale_dtype(self) -> torch.dtype:
        return torch.float32 if self.group_size is None else torch.float16

    def groups(self, k: int) -> int:
        return 1 if self.group_size is None else k // self.group_size

    def bits_per_weight(self, n: int, k: int) -> float:
        return sum(_nbytes(s, d) for s, d in expected_tensors(self, n, k).values()) * 8 / (n * k)

    def describe(self) -> str:
        g = "per-channel" if self.group_size is None else f"g{self.group_size}"
        return f"int{self.bits} {g} {'sym' if self.symmetric else 'asym'}"


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * dtype.itemsize


def expected_tensors(spec: IntSpec, n: int, k: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name → (shape, dtype) of every stored tensor for an [n, k] weight."""
    g = spec.groups(k)
    qdtype = torch.int8 if spec.symmetric and spec.bits == 8 else torch.uint8
    out = {"qweight": ((n, k * spec.bits // 8), qdtype), "scales": ((n, g), spec.scale_dtype)}
    if not spec.symmetric:
        out["zeros"] = ((n, g), torch.uint8)
    return out


def tensor_names(spec: IntSpec) -> list[str]:
    return ["qweight", "scales"] if spec.symmetric else ["qweight", "scales", "zeros"]


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes [..., K] into [..., K * bits / 8] bytes, lowest bits first.

    Unsigned codes give uint8; signed codes (int8 input) are stored two's complement: int8 as is for
    8 bits, ``c & mask`` in uint8 below 8 bits.
    """
    per = 8 // bits
    if per == 1:
        return codes.contiguous()
    codes = codes.view(torch.uint8) if codes.dtype in (torch.int8, torch.uint8) else codes.to(torch.uint8)
    codes = codes & ((1 << bits) - 1)  # signed codes keep their two's complement low bits
    shaped = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    out = shaped[..., 0].clone()
    for i in range(1, per):
        out |= shaped[..., i] << (bits * i)
    return out


def unpack_bits(packed: torch.Tensor, bits: int, signed: bool = False) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: codes [..., B * 8 / bits], int8 when ``signed`` else uint8."""
    per = 8 // bits
    if per == 1:
        return packed
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(per)]
    codes = torch.stack(parts, dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * per)
    if signed:
        half = 1 << (bits - 1)
        codes = (codes.to(torch.int16) ^ half).sub_(half).to(torch.int8)
    return codes


def _grouped(t: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, K] → [N, G, K/G] view, to broadcast per-group [N, G, 1] values without copying them out."""
    return t.reshape(t.shape[0], groups, -1)


def quantize_to_codes(w: torch.Tensor, spec: IntSpec, scales: torch.Tensor, zeros: torch.Tensor | None) -> torch.Tensor:
    """Round ``w`` [N, K] to the grid given by ``scales`` (and ``zeros``): uint8 codes, or int8 when symmetric."""
    groups = scales.shape[-1]
    q = _grouped(w.float(), groups) / scales.float()[..., None]
    if spec.symmetric:
        top = spec.qtype.midpoint - 1
        return q.round_().clamp_(-top, top).to(torch.int8).reshape(w.shape)
    q = q.round_().add_(zeros.float()[..., None]).clamp_(0, spec.qtype.qmax)
    return q.to(torch.uint8).reshape(w.shape)


def dequantize(tensors: dict[str, torch.Tensor], spec: IntSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Stored tensors → the [N, K] weight they represent, in ``dtype``."""
    q = unpack_bits(tensors["qweight"], spec.bits, signed=spec.symmetric).float()
    scales = tensors["scales"]
    q = _grouped(q, scales.shape[-1])
    if not spec.symmetric:
        q = q - tensors["zeros"].float()[..., None]
    return (q * scales.float()[..., None]).reshape(q.shape[0], -1).to(dtype)
