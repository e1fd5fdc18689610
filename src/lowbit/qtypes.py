"""Quantized element types and zero-point kinds: objects, not loose ints or sentinels."""

from __future__ import annotations

import dataclasses
import enum


class ZeroKind(str, enum.Enum):
    """How a format stores the offset of its grid.

    NONE: symmetric, signed codes ``w = c * s``. INTEGER: an integer code ``z`` per group,
    ``w = (q - z) * s`` (GPTQ, AWQ, compressed-tensors). FLOAT: a float offset ``m`` per group,
    ``w = q * s + m`` or the tinygemm form ``w = (q - mid) * s + m`` (torch's int4 CPU/CUDA kernels, HQQ, GGUF Q4_1).
    """

    NONE = "none"
    INTEGER = "integer"
    FLOAT = "float"


@dataclasses.dataclass(frozen=True)
class QType:
    """An integer code of ``bits`` bits: unsigned [0, 2**bits - 1] or signed two's complement."""

    name: str
    bits: int

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    @property
    def midpoint(self) -> int:
        """2**(bits-1): the tinygemm zero of unsigned codes, and the bound of signed ones."""
        return 1 << (self.bits - 1)


uint2 = QType("uint2", 2)
uint3 = QType("uint3", 3)
uint4 = QType("uint4", 4)
uint8 = QType("uint8", 8)

BY_BITS = {q.bits: q for q in (uint2, uint3, uint4, uint8)}


def for_bits(bits: int) -> QType:
    return BY_BITS[bits]


def zero_to_float_offset(zeros, scales, midpoint: int):
    """Integer zero-point → tinygemm float offset: ``(q - z) * s == (q - mid) * s + (mid - z) * s``."""
    return (midpoint - zeros.to(scales.dtype)) * scales


def float_offset_to_zero(offsets, scales, midpoint: int):
    """Inverse of :func:`zero_to_float_offset` (exact when the offset came from an integer zero)."""
    return (midpoint - offsets / scales).round()


# ---- 4-bit code books (value of each 4-bit code, in code order) ---------------------------------------------------

NF4_CODE: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230850219727, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
"""QLoRA's NormalFloat4 (arXiv 2305.14314), bitsandbytes' order: code 7 is 0.0, code 15 is 1.0."""

FP4_E2M1_CODE: tuple[float, ...] = (
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
)
"""OCP E2M1 by bit pattern: bit 3 sign, bits 2-1 exponent (bias 1), bit 0 mantissa; emax 2, largest 6."""
