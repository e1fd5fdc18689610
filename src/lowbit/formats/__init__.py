"""Bit-exact storage layouts (pure torch): what is saved, and how it unpacks."""

from lowbit.formats.base import WeightFormat, format_from_key, format_kinds
from lowbit.formats.codebook import CodebookSpec
from lowbit.formats.fp8 import Fp8Spec
from lowbit.formats.intgroup import IntSpec, pack_bits, quantize_to_codes, unpack_bits
from lowbit.formats.mx import MxSpec
from lowbit.formats.w8a8 import W8A8Spec

__all__ = ["CodebookSpec", "Fp8Spec", "IntSpec", "MxSpec", "W8A8Spec", "WeightFormat", "format_from_key", "format_kinds", "pack_bits",
           "quantize_to_codes", "unpack_bits"]
