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
from lowbit.formats.base import WeightFormat, check_range
from lowbit.formats.codebook import code_values, e2m1_codes, pack_nibbles, unpack_nibbles
from lowbit.qtypes import fp4_e2m1

MX_BLOCK = 32
E8M0_BIAS = 127
E2M1_EMAX = 2
E8M0_LARGEST = 252  # the exponent of a block whose amax is float32's largest: 253 and 254 are never written, 255 is NaN


@dataclasses.dataclass(frozen=True)
class MxFormat(WeightFormat, kind="mx"):
    """An MX weight: the element type (only E2M1 so far) and the inputs sharing one exponent (32 by the OCP spec)."""

    element: str = "fp4_e2m1"
    exponent_block: int = MX_BLOCK  # consecutive inputs sharing one E8M0 scale

    def __post_init__(self) -> None:
        if self.element != "fp4_e2m1":
            raise FormatError(f"MxFormat.element={self.element!r}; expected 'fp4_e2m1', the only MX element type "
                              "lowbit stores")
        if self.exponent_block != MX_BLOCK:
            raise FormatError(f"MxFormat.exponent_block={self.exponent_block}; the OCP MX format fixes it at "
                              f"{MX_BLOCK}: leave it at its default")

    def describe(self) -> str:
        return f"mxfp4 b{self.exponent_block} e8m0"

    def check_inputs(self, k: int) -> None:
        if k % self.exponent_block:
            raise FormatError(f"a weight with {k} inputs cannot be stored as {self.describe()}: MX blocks need a "
                              f"multiple of {self.exponent_block} inputs; leave this layer unquantized "
                              "(modules_to_not_convert)")

    def expected_tensors(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        self.check_inputs(k)
        return {"qweight": ((n, k // 2), torch.uint8), "scales": ((n, k // self.exponent_block), torch.uint8)}

    def encode_rows(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows → packed E2M1 codes (low nibble first) and the biased exponent of each block."""
        n, k = w.shape
        x = w.float().reshape(n, k // self.exponent_block, self.exponent_block)
        biased = shared_exponent(x.abs().amax(dim=-1))
        codes = e2m1_codes(x / e8m0_to_float(biased)[..., None])  # dividing by a power of two is exact
        return {"qweight": pack_nibbles(codes.view(n, k), fp4_e2m1.high_first), "scales": biased}

    def check(self, tensors: dict[str, torch.Tensor], own: bool = True) -> None:
        """E8M0 scale bytes within 0..252: 255 is NaN, and 253-254 scale beyond any float32 weight."""
        check_range("scales", tensors["scales"], 0, E8M0_LARGEST, "E8M0 exponents (255 is NaN)")

    def decode(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        packed, biased = tensors["qweight"], tensors["scales"]
        n = packed.shape[0]
        values = code_values(fp4_e2m1, packed.device)[unpack_nibbles(packed, fp4_e2m1.high_first).int()]
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
