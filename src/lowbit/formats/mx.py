"""OCP Microscaling MXFP4: E2M1 elements in blocks of 32 inputs sharing one E8M0 power-of-two scale.

Stored tensors for a weight of shape [N, K] (K a multiple of 32):

- ``qweight`` [N, K/2] uint8: E2M1 bit patterns (bit 3 sign, bits 2-1 exponent, bit 0 mantissa), two per byte,
  the first element of each pair in the LOW nibble (OCP / torch ``float4_e2m1fn_x2``).
- ``scales`` [N, K/32] uint8: E8M0 biased exponents e + 127 of the block scales X = 2**e (255, NaN, is never
  written; an all-zero block stores 0, the smallest scale 2**-127, with zero codes).

Quantization (OCP MX v1.0, §6.3): ``e = floor(log2(amax)) - 2`` (2 is E2M1's emax), elements
``E2M1(v / X)`` rounded to nearest, ties to even, saturating at ±6. Dequantization: ``w = E2M1 value * X``.
"""

from __future__ import annotations

import dataclasses

import torch

from lowbit.errors import FormatError
from lowbit.formats.base import WeightFormat
from lowbit.formats.codebook import CHUNK_ELEMENTS, code_values, e2m1_codes, pack_nibbles, unpack_nibbles

MX_BLOCK = 32
E8M0_BIAS = 127
E2M1_EMAX = 2


@dataclasses.dataclass(frozen=True)
class MxFormat(WeightFormat, kind="mx"):
    """An MX weight: the element type (only E2M1 so far) and the block size (32 by the OCP fmt)."""

    element: str = "fp4_e2m1"
    block_size: int = MX_BLOCK

    def __post_init__(self) -> None:
        if self.element != "fp4_e2m1":
            raise FormatError(f"MxFormat.element={self.element!r}; expected 'fp4_e2m1'")
        if self.block_size != MX_BLOCK:
            raise FormatError(f"MxFormat.block_size={self.block_size}; the OCP MX format fixes it at {MX_BLOCK}")

    def describe(self) -> str:
        return f"mxfp4 b{self.block_size} e8m0"

    def check(self, k: int) -> None:
        if k % self.block_size:
            raise FormatError(f"a weight with {k} inputs cannot be stored as {self.describe()}: MX blocks need a "
                              f"multiple of {self.block_size} inputs; leave this layer unquantized (modules_to_not_convert)")

    def expected_tensors(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        self.check(k)
        return {"qweight": ((n, k // 2), torch.uint8), "scales": ((n, k // self.block_size), torch.uint8)}

    def dequantize(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        packed, biased = tensors["qweight"], tensors["scales"]
        n = packed.shape[0]
        values = code_values("fp4", packed.device)[unpack_nibbles(packed, high_first=False).int()]
        w = values.view(n, biased.shape[1], -1) * e8m0_to_float(biased)[..., None]
        return w.view(n, -1).to(dtype)


def e8m0_to_float(biased: torch.Tensor) -> torch.Tensor:
    """E8M0 biased exponents (uint8, 0..254) → 2**(b - 127) as exact fp32 (2**-127 is a subnormal)."""
    b = biased.to(torch.int32)
    bits = torch.where(b == 0, torch.full_like(b, 1 << 22), b << 23)
    return bits.view(torch.float32)


def shared_exponent(amax: torch.Tensor) -> torch.Tensor:
    """Block amax (fp32) → biased E8M0 exponent (uint8): floor(log2(amax)) - 2 + 127, clamped to [0, 254].

    ``frexp`` gives the exact floor(log2) (also for subnormals); amax 0 gives 0, the smallest scale.
    """
    _, exp = torch.frexp(amax)
    biased = (exp.to(torch.int32) - 1 - E2M1_EMAX + E8M0_BIAS).clamp_(0, 254)
    return torch.where(amax > 0, biased, torch.zeros_like(biased)).to(torch.uint8)


def mx_quantize(w: torch.Tensor, fmt: MxFormat) -> dict[str, torch.Tensor]:
    """``w`` [N, K] → {"qweight", "scales"} of ``fmt``, a block of rows at a time."""
    k = w.shape[1]
    fmt.check(k)
    rows = max(1, CHUNK_ELEMENTS // k)
    packed, scales = [], []
    for block in w.split(rows):
        x = block.float().reshape(block.shape[0], k // fmt.block_size, fmt.block_size)
        biased = shared_exponent(x.abs().amax(dim=-1))
        codes = e2m1_codes(x / e8m0_to_float(biased)[..., None])  # dividing by a power of two is exact
        packed.append(pack_nibbles(codes.view(block.shape[0], k), high_first=False))
        scales.append(biased)
    return {"qweight": torch.cat(packed), "scales": torch.cat(scales)}
