"""Bit-exact storage layouts (pure torch): what is saved, how a weight encodes into it, and how it decodes."""

from lowbit.formats.base import CHUNK_ELEMENTS, WeightFormat, format_from_key, format_kinds
from lowbit.formats.codebook import CodebookFormat
from lowbit.formats.fp8 import Fp8Format
from lowbit.formats.intgroup import IntFormat, pack_bits, unpack_bits
from lowbit.formats.mx import MxFormat
from lowbit.formats.w8a8 import W8A8Format

__all__ = ["CHUNK_ELEMENTS", "CodebookFormat", "Fp8Format", "IntFormat", "MxFormat", "W8A8Format", "WeightFormat",
           "format_from_key", "format_kinds", "pack_bits", "unpack_bits"]
