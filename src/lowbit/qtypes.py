"""Quantized element types, zero-point kinds and 4-bit code books: objects, not loose ints, strings or sentinels."""

from __future__ import annotations

import dataclasses
import enum

from lowbit.errors import FormatError


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
    if bits not in BY_BITS:
        raise FormatError(f"no integer qtype of {bits} bits; expected one of {sorted(BY_BITS)}")
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

BNB_FP4_CODE: tuple[float, ...] = (
    0.0, 0.0052083334885537624, 0.6666666865348816, 1.0, 0.3333333432674408, 0.5, 0.1666666716337204, 0.25,
    0.0, -0.0052083334885537624, -0.6666666865348816, -1.0, -0.3333333432674408, -0.5, -0.1666666716337204, -0.25,
)
"""bitsandbytes' "fp4" (its ``quant_map`` for quant_type="fp4", float32 values): not OCP E2M1. Bit 3 is the sign,
the other bits index a grid normalized to a largest magnitude of 1 (code 3); codes are not sorted by value; code 8
is +0.0 as in bitsandbytes' map."""


class Rounding(str, enum.Enum):
    """How a value between two code-book entries picks one."""

    TIES_LOWER = "ties_lower"  # nearest; on a midpoint the lower code (bitsandbytes' midpoint search)
    TIES_EVEN = "ties_even"  # nearest; on a midpoint the even mantissa (IEEE round-half-even), saturating


class CodeBook(str):
    """A 4-bit code book: the value of each code, the largest magnitude a block's absmax maps onto, the nibble
    order of packed bytes, and the rounding rule.

    It is also its name (a ``str``: "nf4", "fp4"), which is what configs and format keys store, so code that
    keys tables by the name keeps working with the object."""

    values: tuple[float, ...]
    levels: float  # the largest |value|: a block's absmax maps onto it
    high_first: bool  # element 2j of a packed byte in the high nibble (bitsandbytes) or the low one (OCP)
    rounding: Rounding

    def __new__(cls, name: str, values: tuple[float, ...], *, levels: float, high_first: bool,
                rounding: Rounding) -> CodeBook:
        book = super().__new__(cls, name)
        for key, value in (("values", tuple(values)), ("levels", float(levels)), ("high_first", high_first),
                           ("rounding", rounding)):
            object.__setattr__(book, key, value)
        return book

    def __setattr__(self, key: str, value) -> None:
        raise AttributeError(f"CodeBook {self.name!r} is immutable")

    @property
    def name(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"CodeBook({self.name!r})"

    def __reduce__(self):
        return code_book, (self.name,)


nf4 = CodeBook("nf4", NF4_CODE, levels=1.0, high_first=True, rounding=Rounding.TIES_LOWER)
fp4_e2m1 = CodeBook("fp4", FP4_E2M1_CODE, levels=6.0, high_first=False, rounding=Rounding.TIES_EVEN)
bnb_fp4 = CodeBook("bnb_fp4", BNB_FP4_CODE, levels=1.0, high_first=True, rounding=Rounding.TIES_LOWER)

CODE_BOOKS = {b.name: b for b in (nf4, fp4_e2m1, bnb_fp4)}


def code_book(name: str | CodeBook) -> CodeBook:
    """The code book called ``name`` ("nf4", "fp4", "bnb_fp4"); a CodeBook is returned as is."""
    if isinstance(name, CodeBook):
        return name
    if name not in CODE_BOOKS:
        raise FormatError(f"code book {name!r} is unknown; expected one of {sorted(CODE_BOOKS)}")
    return CODE_BOOKS[name]
