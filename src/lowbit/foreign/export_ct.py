"""lowbit formats → compressed-tensors tensors (the format vLLM serves): each layer maps exactly or is refused with
the reason and the nearest lowbit format that would map.

- ``IntFormat`` 2/3/4/8-bit, per group or per channel, without ``g_idx`` and with integer (or no) zero-points →
  ``pack-quantized``: ``weight_packed`` int32 [N, K·b/32] is lowbit's unsigned code stream (asymmetric codes, or
  symmetric codes + 2^(b−1)), ``weight_scale`` [N, G] in the scales' dtype, asymmetric ``weight_zero_point`` =
  z − 2^(b−1) packed along N, ``weight_shape``. vLLM serves it with its WNA16 kernels (Marlin / Machete).
- ``Fp8Format`` → ``float-quantized``: ``weight`` e4m3 and ``weight_scale`` (per channel, or 128x128 blocks),
  dynamic per-token fp8 activations for W8A8. vLLM: its FP8 kernels.
- Refused: HQQ's float zero-points, act-order ``g_idx`` (compressed-tensors dropped its group act-order layout),
  the nf4 / fp4 code books, MXFP4 and int8 W8A8.
"""

from __future__ import annotations

import torch

from lowbit.errors import FormatError
from lowbit.formats import CodebookFormat, Fp8Format, IntFormat, MxFormat, WeightFormat, pack_bits
from lowbit.foreign.export_common import to_int32, unsigned_codes

CT_VERSION = "0.20.0"  # the compressed-tensors release whose layout this writes (and tests read back)


def refusal(fmt: WeightFormat) -> str | None:
    """Why ``fmt`` has no exact compressed-tensors form (and what would map), or None when it maps."""
    if isinstance(fmt, IntFormat):
        if fmt.float_zero:
            return (f"{fmt.describe()} stores float zero-points (HQQ), which compressed-tensors cannot hold; nearest "
                    "that maps: an integer-zero format (rtn / gptq / awq asymmetric)")
        if fmt.g_idx:
            return (f"{fmt.describe()} keeps act-order groups (g_idx), which compressed-tensors {CT_VERSION} and "
                    "vLLM's WNA16 kernels reject; nearest that maps: gptq with act_order and static_groups")
        return None
    if isinstance(fmt, Fp8Format):
        return None
    if isinstance(fmt, CodebookFormat):
        return (f"{fmt.describe()} is a code book compressed-tensors lacks; nearest that maps: int4 with group size "
                f"{fmt.absmax_block} (rtn, gptq or awq), or export it as bitsandbytes")
    if isinstance(fmt, MxFormat):
        return f"{fmt.describe()} is not mapped to compressed-tensors' mxfp4 yet; nearest that maps: fp8 or int4"
    return f"{fmt.describe()} has no compressed-tensors form here; nearest that maps: int8 weight-only (rtn) or fp8"


def scheme(fmt: WeightFormat) -> dict:
    """The compressed-tensors scheme (``format``, ``weights``, ``input_activations``) of a layer in ``fmt``."""
    if isinstance(fmt, IntFormat):
        group = fmt.group_size
        return {"format": "pack-quantized", "input_activations": None, "output_activations": None,
                "weights": {"num_bits": fmt.bits, "type": "int", "symmetric": fmt.symmetric,
                            "strategy": "group" if group else "channel", "group_size": group, "dynamic": False,
                            "actorder": None, "block_structure": None, "observer": "minmax"}}
    acts = None
    if fmt.activations == "dynamic":
        acts = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token", "dynamic": True,
                "group_size": None, "block_structure": None, "actorder": None, "observer": None}
    return {"format": "float-quantized", "input_activations": acts, "output_activations": None,
            "weights": {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, "actorder": None,
                        "strategy": "block" if fmt.tile else "channel", "group_size": None, "observer": "minmax",
                        "block_structure": [fmt.tile, fmt.tile] if fmt.tile else None}}


def config(layers: dict, ignore: list[str]) -> dict:
    """compressed-tensors' quantization_config: one config group per distinct format, targeting its layers."""
    import re

    groups: dict[str, list[str]] = {}
    for name, layer in layers.items():
        groups.setdefault(layer.fmt.key(), []).append(name)
    config_groups = {f"group_{i}": {"targets": [f"re:^{re.escape(n)}$" for n in names], **scheme(layers[names[0]].fmt)}
                     for i, names in enumerate(groups.values())}
    formats = sorted({g["format"] for g in config_groups.values()})
    return {"quant_method": "compressed-tensors", "format": formats[0] if len(formats) == 1 else "mixed-precision",
            "quantization_status": "compressed", "config_groups": config_groups, "ignore": ignore,
            "kv_cache_scheme": None, "sparsity_config": {}, "transform_config": {},
            "global_compression_ratio": None, "version": CT_VERSION}


def tensors(fmt: WeightFormat, canonical: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A layer's canonical lowbit tensors → its compressed-tensors tensors (suffixes after ``<module>.``)."""
    why = refusal(fmt)
    if why:
        raise FormatError(why)
    if isinstance(fmt, Fp8Format):
        return {"weight": canonical["qweight"], "weight_scale": canonical["scales"].float()}
    codes = unsigned_codes(fmt, canonical)  # compressed-tensors packs q + 2^(b-1) for symmetric layers
    n, k = codes.shape
    out = {"weight_packed": to_int32(pack_bits(codes, fmt.bits)), "weight_scale": canonical["scales"],
           "weight_shape": torch.tensor([n, k], dtype=torch.int64)}
    if not fmt.symmetric:
        zeros = canonical["zeros"].T.contiguous()  # [G, N]: packed along N, stored [⌈N·b/32⌉, G]
        out["weight_zero_point"] = to_int32(pack_bits(zeros, fmt.bits)).T.contiguous()
    return out
