"""What the exporters of integer layers share (``export_ct``, ``export_gptq``, ``export_awq``, ``export_gguf``): the
unsigned code stream and integer zero-points every target stores, int32 words, the refusals that are the same for
every target, and the one-grid-per-model check of the formats whose config has a single bit width and group size.
"""

from __future__ import annotations

import torch

from lowbit.errors import FormatError
from lowbit.formats import IntFormat, WeightFormat, unpack_bits


def to_int32(packed: torch.Tensor) -> torch.Tensor:
    """Bytes [R, B] → int32 words [R, ⌈B/4⌉] (zero padded), little-endian as safetensors stores them."""
    pad = -packed.shape[-1] % 4
    if pad:
        packed = torch.nn.functional.pad(packed, (0, pad))
    return packed.contiguous().reshape(-1).view(torch.int32).reshape(packed.shape[0], -1)  # any strides of size-1 dims


def unsigned_codes(fmt: IntFormat, canonical: dict[str, torch.Tensor]) -> torch.Tensor:
    """A layer's codes as unsigned integers [N, K] uint8 decoding as ``(q − z) · s``: asymmetric codes as stored,
    symmetric (signed) codes c as c + 2^(b−1), whose zero-point is then 2^(b−1) (:func:`integer_zeros`)."""
    q = canonical["qweight"]
    if not fmt.symmetric:
        return q if fmt.bits == 8 else unpack_bits(q, fmt.bits)
    codes = q if fmt.bits == 8 else unpack_bits(q, fmt.bits, signed=True)  # int8 storage at 8 bits
    return (codes.to(torch.int16) + (1 << (fmt.bits - 1))).to(torch.uint8)


def integer_zeros(fmt: IntFormat, canonical: dict[str, torch.Tensor]) -> torch.Tensor:
    """The zero-point of every group [N, G] uint8 to go with :func:`unsigned_codes` (2^(b−1) for symmetric layers)."""
    if not fmt.symmetric:
        return canonical["zeros"]
    return torch.full(canonical["scales"].shape, 1 << (fmt.bits - 1), dtype=torch.uint8)


def int_refusal(fmt: WeightFormat, target: str, scale_dtypes: tuple[torch.dtype, ...]) -> str | None:
    """The reasons every integer-only target shares for refusing ``fmt``: not an integer grid, HQQ's float
    zero-points, scales in a dtype the target does not store. None when none applies."""
    if not isinstance(fmt, IntFormat):
        return f"{fmt.describe()} is not an integer grid and {target} holds integer codes only; export as " \
               "compressed-tensors, or quantize with an integer method (rtn, gptq, awq)"
    if fmt.float_zero:
        return (f"{fmt.describe()} stores float zero-points (HQQ), which {target} cannot hold; nearest that maps: an "
                "integer-zero format (rtn / gptq / awq)")
    if fmt.scale_dtype not in scale_dtypes:
        names = " or ".join(str(d).removeprefix("torch.") for d in scale_dtypes)
        return (f"{fmt.describe()} keeps {str(fmt.scale_dtype).removeprefix('torch.')} scales and {target} stores "
                f"{names} ones, which would round them; export as compressed-tensors, or quantize with a group size "
                "(float16 scales)")
    return None


def one_grid(layers: dict, target: str) -> IntFormat:
    """The one (bits, group size) a ``target`` config names for the whole model; a model that mixes them is refused."""
    fmts = {layer.fmt for layer in layers.values()}
    if len({(f.bits, f.group_size) for f in fmts}) != 1:
        raise FormatError(f"{target} stores one bit width and group size per model; this model mixes "
                          f"{sorted({f.describe() for f in fmts})}; export as compressed-tensors")
    return next(iter(fmts))
