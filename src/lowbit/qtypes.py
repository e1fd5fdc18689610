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
