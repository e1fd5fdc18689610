"""The in-register code-book decoding of the Triton kernels (kernels/triton/lut.py), checked on the CPU.

The PTX the kernels inline is run here by a small emulator of the instructions it uses, written from the PTX
manual (``prmt.b32`` default mode: a selector nibble's low 3 bits pick one of the 8 source bytes, its top bit
replicates that byte's sign). The GPU tests check the same kernels against the reference op on the hardware.
"""

import random
import re
import struct

import pytest

from lowbit.kernels.triton import lut
from lowbit.qtypes import CODE_BOOKS

BOOKS = {code: tuple(struct.unpack("<f", struct.pack("<f", v / book.levels))[0] for v in book.values)
         for code, book in ((c, CODE_BOOKS[c]) for c in ("nf4", "fp4"))}


def prmt(a: int, b: int, c: int) -> int:
    src = a | b << 32
    out = 0
    for n in range(4):
        sel = c >> 4 * n & 15
        byte = src >> 8 * (sel & 7) & 0xFF
        if sel & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << 8 * n
    return out


def lop3(a: int, b: int, c: int, table: int) -> int:
    return sum(((table >> ((a >> i & 1) << 2 | (b >> i & 1) << 1 | (c >> i & 1))) & 1) << i for i in range(32))


OPS = {"prmt.b32": prmt, "lop3.b32": lop3, "and.b32": lambda a, b: a & b, "or.b32": lambda a, b: a | b,
       "shl.b32": lambda a, b: a << b & 0xFFFFFFFF, "shr.u32": lambda a, b: a >> b}


def run_ptx(asm: str, operands: dict[int, int]) -> list[int]:
    """Run ``asm`` with ``$k`` inputs from ``operands``; return the outputs ``$0..$3``."""
    regs = {f"${k}": v for k, v in operands.items()}
    for line in re.split(r"[;{}]", asm):  # one statement between semicolons (the asm is one line)
        line = line.strip()
        if not line or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        dst, *src = [a.strip() for a in args.split(",")]
        vals = [int(s, 0) if re.fullmatch(r"(0x)?[0-9a-fA-F]+", s) else regs[s] for s in src]
        regs[dst] = OPS[op](*vals) & 0xFFFFFFFF
    return [regs[f"${k}"] for k in range(4)]


@pytest.mark.parametrize("code", list(BOOKS))
def test_kernel_table_is_the_book_to_bf16_precision(code):
    for exact, used in zip(BOOKS[code], lut.kernel_table(BOOKS[code])):
        assert abs(used - exact) <= 2.0 ** -8 * abs(exact) + 1e-30, (code, exact, used)  # bf16 rounding at most


def decoding(code: str) -> tuple[list[int], list[int]]:
    """(the fp32 bits each code must decode to, the eight table words the kernels pass to the PTX)."""
    book = BOOKS[code]
    return [lut.decoded_bits(p) for p in lut.prefixes(book)], lut.table_words(book)


@pytest.mark.parametrize("code", list(BOOKS))
def test_word_decoding_gives_the_kernel_table(code):
    want, tables = decoding(code)
    rng = random.Random(0)
    words = [rng.getrandbits(32) for _ in range(300)] + [0, 0xFFFFFFFF, 0x76543210, 0xFEDCBA98]
    for word in words:
        for half in (0, 1):
            got = run_ptx(lut.WORD_ASM[half], {4: word, **{5 + r: t for r, t in enumerate(tables)}})
            codes = [word >> 4 * (4 * half + n) & 15 for n in range(4)]
            assert got == [want[q] for q in codes], (code, hex(word), half)


@pytest.mark.parametrize("code", list(BOOKS))
def test_code_decoding_gives_the_kernel_table(code):
    want, tables = decoding(code)
    rng = random.Random(1)
    for _ in range(300):
        codes = [rng.randrange(16) for _ in range(4)]
        operands = {4 + n: q for n, q in enumerate(codes)}
        for r, t in enumerate(tables):  # each table word comes as four copies (pack=4)
            operands.update({8 + 4 * r + e: t for e in range(4)})
        assert run_ptx(lut.CODE_ASM, operands) == [want[q] for q in codes], (code, codes)


def test_prefix_table_needs_sixteen_entries():
    with pytest.raises(ValueError, match="16 entries, got 3"):
        lut.prefixes((0.0, 0.5, 1.0))
