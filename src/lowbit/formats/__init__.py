"""Bit-exact storage layouts (pure torch): what is saved, and how it unpacks."""

from lowbit.formats.intgroup import IntSpec, dequantize, expected_tensors, pack_bits, quantize_to_codes, tensor_names, unpack_bits

__all__ = ["IntSpec", "dequantize", "expected_tensors", "pack_bits", "quantize_to_codes", "tensor_names", "unpack_bits"]
