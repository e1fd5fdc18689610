"""16-entry code books (nf4, fp4) looked up in registers with ``prmt`` byte permutes (pure Python; no triton).

A ``prmt.b32 d, a, b, c`` picks each byte of ``d`` from the 8 bytes of ``a, b`` by a 3-bit index in a nibble
of ``c``; with the nibble's top bit set it writes the picked byte's sign instead (0x00 or 0xFF). The kernels keep
two bytes of every table value, the fp32's top byte (sign, exponent) and the next one (exponent, mantissa),
as two 16-byte tables (eight 32-bit words, loaded once and passed to the PTX in registers), and decode four codes
with ten ``prmt``:

- twice per table: entries 0-7 and 8-15 looked up by the low 3 bits of each code, then one ``prmt`` choosing
  between them by the code's bit 3;
- once per value: its two bytes placed on top of a 32-bit word, the low two bytes filled with the top byte's
  sign (zeros for a positive value, 0xFFFF for a negative one).

So a value is its table entry to bf16 precision (the top 16 bits kept; as bitsandbytes' kernels hold their
table in the activation dtype). :func:`kernel_table` gives the exact values the kernels use, which the reference
path of the kernels (Triton's interpreter) loads from memory instead, so both paths compute the same numbers.
"""

from __future__ import annotations

import functools
import struct

# Output byte n of 4 decoded values: top byte from the high table (byte 4+n of {lo, hi}), then the low table's
# byte n, then twice the top byte's sign.
PLACE = tuple((4 + n) << 12 | n << 8 | (8 | 4 + n) << 4 | (8 | 4 + n) for n in range(4))


def _bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def _top16(u: int) -> int:
    """The top 16 bits of fp32 bits ``u`` rounded to nearest, ties to even (bf16 rounding)."""
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


@functools.lru_cache(maxsize=8)
def prefixes(values: tuple[float, ...]) -> tuple[int, ...]:
    """Per entry, the 16-bit prefix whose decoded value (see the module docstring) is nearest the entry."""
    if len(values) != 16:
        raise ValueError(f"a prmt table has 16 entries, got {len(values)}")
    out = []
    for v in values:
        u = _bits(v)
        if not u >> 31:
            out.append(_top16(u))  # decoded as prefix << 16
        elif u & 0x7FFFFFFF == 0:
            out.append(0x8000)  # -0.0 decodes to -9e-41
        else:  # decoded as prefix << 16 | 0xFFFF: one step below the rounded magnitude, plus nearly one step
            out.append(0x8000 | (_top16(u & 0x7FFFFFFF) - 1))
    return tuple(out)


def decoded_bits(prefix: int) -> int:
    """The fp32 bits a kernel decodes for one 16-bit prefix."""
    return prefix << 16 | (0xFFFF if prefix & 0x8000 else 0)


def kernel_table(values: tuple[float, ...]) -> list[float]:
    """The 16 fp32 values the kernels compute with for a code book's ``values``."""
    return [struct.unpack("<f", struct.pack("<I", decoded_bits(p)))[0] for p in prefixes(values)]


def table_words(values: tuple[float, ...]) -> list[int]:
    """The high-byte then the low-byte table, four 32-bit words each (entry 4r+i in byte i of word r), as the
    kernels pass them to the PTX below in registers."""
    pre = prefixes(values)
    hi = [sum((pre[4 * r + i] >> 8) << (8 * i) for i in range(4)) for r in range(4)]
    lo = [sum((pre[4 * r + i] & 0xFF) << (8 * i) for i in range(4)) for r in range(4)]
    return hi + lo


def _decode4(table: list[str]) -> list[str]:
    """PTX decoding the four codes whose low 3 bits are the nibbles of ``%ls`` (``%lp``: per nibble n, n or 4 + n
    by the code's bit 3) into ``$0..$3``, with the eight table words in the operands named by ``table``."""
    lines = []
    for name, t in (("%lh", table[:4]), ("%ll", table[4:])):
        lines += [f"prmt.b32 %la, {t[0]}, {t[1]}, %ls;",
                  f"prmt.b32 %lb, {t[2]}, {t[3]}, %ls;",
                  f"prmt.b32 {name}, %la, %lb, %lp;"]
    return lines + [f"prmt.b32 ${n}, %ll, %lh, {PLACE[n]:#06x};" for n in range(4)]


_HEAD = ["{", ".reg .b32 %la, %lb, %lh, %ll, %ls, %lp;"]
_SELECT = ["shr.u32 %lp, %ls, 1;",
           "and.b32 %ls, %ls, 0x7777;",  # low 3 bits of each code: prmt's plain byte copy
           "lop3.b32 %lp, %lp, 0x4444, 0x3210, 0xEA;"]  # (a & b) | c: nibble n is n, or 4 + n for codes >= 8

# One call per int32 word $4 holding 8 codes (code i in bits 4i..4i+3), the table words in $5..$12: outputs
# $0..$3 are the fp32 values of codes 0-3 (WORD_ASM[0]) or 4-7 (WORD_ASM[1]).
WORD_ASM = tuple(" ".join(_HEAD + [f"shr.u32 %ls, $4, {16 * half};"] + _SELECT
                           + _decode4([f"${5 + r}" for r in range(8)]) + ["}"]) for half in (0, 1))

# pack=4: four codes $4..$7 (one per int32, 0..15) → fp32 values $0..$3; each table word comes as four copies
# of one register (operands $8 + 4r .. $11 + 4r), of which the first is used.
CODE_ASM = " ".join(_HEAD + ["shl.b32 %lp, $5, 4;", "or.b32 %ls, $4, %lp;",
                               "shl.b32 %lp, $6, 8;", "or.b32 %ls, %ls, %lp;",
                               "shl.b32 %lp, $7, 12;", "or.b32 %ls, %ls, %lp;"] + _SELECT
                      + _decode4([f"${8 + 4 * r}" for r in range(8)]) + ["}"])
