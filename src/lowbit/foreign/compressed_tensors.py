"""compressed-tensors checkpoints (llm-compressor, vLLM's own format): ``quant_method: compressed-tensors``.

``pack-quantized`` (integer weights, 2/3/4/8 bits here): ``weight_packed`` int32 [N, ⌈K·b/32⌉], codes q + 2^(b−1)
packed densely along K, lowest bits first (its bytes are lowbit's unsigned code stream); ``weight_scale`` [N, G]
in the model's dtype; ``weight_zero_point`` int32 [⌈N·b/32⌉, G] packed along N the same way (asymmetric only);
``weight_shape`` [2]; ``weight_g_idx`` [K] with act-order groups (``actorder: group``; ``actorder: weight``, the
only order llm-compressor 0.14 writes, reorders columns during calibration only and stores plain groups). Decoding
is ``(q − z) · s``: symmetric layers become lowbit's asymmetric ``IntFormat`` with z = 2^(b−1) (their codes reach
−2^(b−1), which lowbit's symmetric range does not hold), in the scale's dtype: exact.

``float-quantized`` (fp8 e4m3 weights): ``weight`` [N, K] float8_e4m3fn and ``weight_scale`` per channel [N, 1],
per tensor [1] or per 128x128 block: lowbit's ``Fp8Format`` with float32 scales (exact); dynamic per-token fp8
activations map onto its W8A8 mode. Other formats (nvfp4, mxfp4, marlin-24, naive-quantized, sparse) and
strategies are refused by name.
"""

from __future__ import annotations

import re

import torch

from lowbit.errors import CheckpointError, ConfigError
from lowbit.formats import Fp8Format, IntFormat, unpack_bits
from lowbit.foreign.base import (SAFETENSORS_DTYPES, LayerMap, Peek, Translation, check_dtype, int32_bytes,
                                 layers_with, require)

INT_BITS = (2, 3, 4, 8)
FORMATS = ("pack-quantized", "float-quantized")


def translate(peek: Peek, qc: dict) -> Translation:
    groups = qc.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise ConfigError("compressed-tensors quantization_config has no config_groups; expected at least one scheme")
    status = qc.get("quantization_status", "compressed")
    if status != "compressed":
        raise ConfigError(f"compressed-tensors quantization_status={status!r}; expected 'compressed' (a saved, packed "
                          "checkpoint); save the model with compressed-tensors' compressor")
    layers = {}
    for name in [*layers_with(peek, "weight_packed"), *layers_with(peek, "weight_scale")]:
        if name not in layers:
            scheme = _scheme(groups, name)
            fmt = scheme.get("format") or qc.get("format") or "pack-quantized"
            if fmt not in FORMATS:
                raise ConfigError(f"compressed-tensors format {fmt!r} (layer {name}) is not supported; expected one "
                                  f"of {list(FORMATS)}; lowbit lacks this scheme")
            layers[name] = (_packed if fmt == "pack-quantized" else _fp8)(peek, name, scheme)
    if not layers:
        raise CheckpointError("config.json says compressed-tensors but no tensor ends in .weight_packed or "
                              ".weight_scale; the tensors are not the format config.json names")
    details = sorted({layer.note for layer in layers.values()})
    return Translation("compressed-tensors", "; ".join(details), layers)


def _scheme(groups: dict, name: str) -> dict:
    """The config group whose targets match module ``name`` (a "re:" pattern, else a class name such as Linear)."""
    by_class = None
    for group in groups.values():
        for target in group.get("targets", []):
            if target.startswith("re:") and re.match(target[3:], name):
                return group
            if not target.startswith("re:") and by_class is None:
                by_class = group
    if by_class is None:
        raise ConfigError(f"no compressed-tensors config group targets {name}; expected a group whose targets match it")
    return by_class


def _weights(scheme: dict, name: str) -> dict:
    args = scheme.get("weights")
    if not isinstance(args, dict):
        raise ConfigError(f"compressed-tensors scheme of {name} has no weights arguments; lowbit reads weight "
                          "quantization only")
    return args


def _packed(peek: Peek, name: str, scheme: dict) -> LayerMap:
    args = _weights(scheme, name)
    bits, strategy, sym = args.get("num_bits"), args.get("strategy"), args.get("symmetric", True)
    if args.get("type", "int") != "int" or bits not in INT_BITS or strategy not in ("group", "channel"):
        raise ConfigError(f"compressed-tensors pack-quantized scheme {args.get('type')} {bits}-bit {strategy!r} (layer "
                          f"{name}) is not supported; expected int weights of {list(INT_BITS)} bits, group or channel "
                          "strategy")
    if scheme.get("input_activations"):
        raise ConfigError(f"compressed-tensors scheme of {name} quantizes activations with integer weights (W{bits}A"
                          f"{scheme['input_activations'].get('num_bits')}); lowbit lacks this scheme")
    roles = {"packed": "weight_packed", "scale": "weight_scale", "shape": "weight_shape"}
    if not sym:
        roles["zero"] = "weight_zero_point"
    if f"{name}.weight_g_idx" in set(peek.keys):
        roles["g_idx"] = "weight_g_idx"
    elif args.get("actorder") in ("group", "dynamic"):
        raise CheckpointError(f"compressed-tensors layer {name} has actorder={args['actorder']!r} but no "
                              "weight_g_idx tensor; expected one for group activation ordering: the tensors are not "
                              "the scheme config.json names")
    keys = require(peek, name, roles, "compressed-tensors")
    n, k = (int(v) for v in peek.read(keys["shape"]).tolist())
    check_dtype(peek, keys["packed"], ("I32",), "compressed-tensors pack-quantized")
    scale_dtype = check_dtype(peek, keys["scale"], ("F16", "BF16", "F32"), "compressed-tensors")
    group = args.get("group_size") if strategy == "group" else None
    groups = k // group if group else 1
    if peek.shape(keys["packed"]) != [n, -(-k * bits // 32)] or peek.shape(keys["scale"]) != [n, groups] \
            or (group and k % group):
        raise CheckpointError(f"compressed-tensors layer {name}: weight_packed {peek.shape(keys['packed'])} and "
                              f"weight_scale {peek.shape(keys['scale'])} are not a {bits}-bit {strategy} layout of "
                              f"[{n}, {k}]; config.json's scheme does not match the tensors")
    ordered = "g_idx" in keys and group is not None and not torch.equal(
        peek.read(keys["g_idx"]).long(), torch.arange(k) // group)
    fmt = IntFormat(bits=bits, group_size=group, symmetric=False, g_idx=ordered,
                    scale_dtype=SAFETENSORS_DTYPES[scale_dtype])
    mid = 1 << (bits - 1)

    def convert(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "zero" in t:
            zeros = unpack_prefix(int32_bytes(t["zero"].T), bits, n).T.contiguous()
        else:
            zeros = torch.full((n, groups), mid, dtype=torch.uint8)
        out = {"qweight": int32_bytes(t["packed"])[:, : k * bits // 8].contiguous(), "scales": t["scale"],
               "zeros": zeros}
        if ordered:
            out["g_idx"] = t["g_idx"].to(torch.int32)
        return out

    g = f"g{group}" if group else "per-channel"
    return LayerMap(name, fmt, keys, convert, note=f"pack-quantized int{bits} {g} {'sym' if sym else 'asym'}"
                                                   f"{' actorder' if ordered else ''}")


def unpack_prefix(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` codes of each row of a dense little-endian bit stream [R, B] bytes (padded as needed)."""
    pad = -packed.shape[-1] % bits
    if pad:
        packed = torch.nn.functional.pad(packed, (0, pad))
    return unpack_bits(packed, bits)[..., :count]


def _fp8(peek: Peek, name: str, scheme: dict) -> LayerMap:
    args = _weights(scheme, name)
    strategy, block = args.get("strategy"), args.get("block_structure")
    if args.get("type") != "float" or args.get("num_bits") != 8 or strategy not in ("channel", "tensor", "block") \
            or (strategy == "block" and list(block or []) != [128, 128]):
        raise ConfigError(f"compressed-tensors float-quantized scheme {args.get('type')} {args.get('num_bits')}-bit "
                          f"{strategy!r} {block or ''} (layer {name}) is not supported; expected fp8 weights per "
                          "channel, per tensor or in 128x128 blocks")
    acts = scheme.get("input_activations")
    dynamic = bool(acts)
    if acts and not (acts.get("type") == "float" and acts.get("num_bits") == 8 and acts.get("dynamic") is True
                     and acts.get("strategy") == "token"):
        raise ConfigError(f"compressed-tensors activation scheme {acts} (layer {name}) is not supported; expected "
                          "none or dynamic per-token fp8")
    keys = require(peek, name, {"weight": "weight", "scale": "weight_scale"}, "compressed-tensors")
    check_dtype(peek, keys["weight"], ("F8_E4M3",), "compressed-tensors float-quantized")
    n, _ = peek.shape(keys["weight"])
    fmt = Fp8Format(tile=128 if strategy == "block" else None, activations="dynamic" if dynamic else "none")

    def convert(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scale = t["scale"].float()
        if strategy == "tensor":
            scale = scale.reshape(1, 1).expand(n, 1).contiguous()
        return {"qweight": t["weight"], "scales": scale.reshape(fmt.scale_shape(*t["weight"].shape))}

    return LayerMap(name, fmt, keys, convert, note=f"float-quantized fp8 {strategy}{' W8A8' if dynamic else ''}")

