"""Bit-exact storage layouts (pure torch): what is saved, and how it unpacks."""

from lowbit.formats.base import WeightFormat, format_from_key, format_kinds
from lowbit.formats.intgroup import IntSpec, pack_bits, quantize_to_codes, unpack_bits

__all__ = ["IntSpec", "WeightFormat", "format_from_key", "format_kinds", "pack_bits", "quantize_to_codes",
           "unpack_bits"]
