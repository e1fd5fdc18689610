"""GPTQ checkpoints (AutoGPTQ, GPTQModel, optimum): ``quant_method: gptq``, 2/3/4/8 bits.

Per layer: ``qweight`` int32 [K·b/32, N], codes packed along K as one little-endian bit stream (so lowbit's codes
for output n are the bytes of column n: ``qweight.T.contiguous().view(uint8)``); ``qzeros`` int32 [G, N·b/32],
zero-points packed along N the same way; ``scales`` [G, N] fp16 (or bf16); ``g_idx`` int32 [K], each input's
group (act-order / ``desc_act`` when it is not ``j // group_size``). ``checkpoint_format`` "gptq" (v1, the default
when absent) stores z − 1, "gptq_v2" stores z. Decoding is ``(q − z) · s`` for symmetric models too (their z is
2^(b−1)), so every layer maps exactly onto lowbit's asymmetric ``IntFormat`` with integer zero-points, in the
file's scale dtype. The planar ``gptq_p`` layout and other packings are refused by name.
"""

from __future__ import annotations

import torch

from lowbit.errors import CheckpointError, ConfigError
from lowbit.formats import IntFormat, unpack_bits
from lowbit.foreign.base import (SAFETENSORS_DTYPES, LayerMap, Peek, Translation, bits_from_shapes, check_dtype,
                                 int32_bytes, layers_with, require)

FORMATS = {"gptq": 1, "gptq_v1": 1, "gptq_v2": 2}
BITS = (2, 3, 4, 8)


def checkpoint_version(qc: dict) -> int:
    fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"
    if fmt not in FORMATS:
        raise ConfigError(f"GPTQ checkpoint_format {fmt!r} is not supported; expected one of {sorted(FORMATS)} "
                          "(the planar gptq_p and kernel-specific packings are not read); re-export the model in the "
                          "gptq (v1) or gptq_v2 format")
    return FORMATS[fmt]


def translate(peek: Peek, qc: dict) -> Translation:
    bits, group = qc.get("bits"), qc.get("group_size", 128)
    if bits not in BITS:
        raise ConfigError(f"GPTQ bits={bits!r} is not supported; expected one of {list(BITS)}")
    if not isinstance(group, int) or isinstance(group, bool) or (group != -1 and group < 1):
        raise ConfigError(f"GPTQ group_size={group!r}; expected -1 (per channel) or a positive group size")
    if qc.get("pack_dtype", "int32") != "int32":
        raise ConfigError(f"GPTQ pack_dtype={qc.get('pack_dtype')!r} is not supported; expected int32")
    version = checkpoint_version(qc)
    layers = {name: _layer(peek, name, bits, None if group == -1 else group, version)
              for name in layers_with(peek, "qweight")}
    if not layers:
        raise CheckpointError("config.json says quant_method gptq but no tensor ends in .qweight; the tensors are not "
                              "a GPTQ checkpoint: fix quantization_config")
    g = "per-channel" if group == -1 else f"g{group}"
    act = " desc_act" if qc.get("desc_act") else ""
    return Translation("gptq", f"GPTQ v{version} {bits}-bit {g}{' sym' if qc.get('sym', True) else ' asym'}{act}",
                       layers)


def _layer(peek: Peek, name: str, bits: int, group: int | None, version: int) -> LayerMap:
    roles = {"qweight": "qweight", "qzeros": "qzeros", "scales": "scales"}
    has_g_idx = f"{name}.g_idx" in set(peek.keys)
    if has_g_idx:
        roles["g_idx"] = "g_idx"
    keys = require(peek, name, roles, "GPTQ")
    for role in ("qweight", "qzeros"):
        check_dtype(peek, keys[role], ("I32",), "GPTQ")
    scale_dtype = check_dtype(peek, keys["scales"], ("F16", "BF16", "F32"), "GPTQ")
    packed_k, n = peek.shape(keys["qweight"])
    groups, n_scales = peek.shape(keys["scales"])
    k = peek.shape(keys["g_idx"])[0] if has_g_idx else (groups * group if group else packed_k * 32 // bits)
    bits_from_shapes("GPTQ", name, bits, packed_k, k)
    if n_scales != n or peek.shape(keys["qzeros"]) != [groups, n * bits // 32] or groups != (k // group if group else 1):
        raise CheckpointError(f"GPTQ layer {name}: qweight {[packed_k, n]}, qzeros {peek.shape(keys['qzeros'])} and "
                              f"scales {[groups, n_scales]} disagree for {bits} bits, group size {group or -1} and {k} "
                              "inputs; the checkpoint does not match its quantization_config")
    ordered = has_g_idx and group is not None and not torch.equal(
        peek.read(keys["g_idx"]).long(), torch.arange(k) // group)
    fmt = IntFormat(bits=bits, group_size=group, symmetric=False, g_idx=ordered,
                    scale_dtype=SAFETENSORS_DTYPES[scale_dtype])
    return LayerMap(name, fmt, keys, lambda t: _convert(t, fmt, version),
                    note=f"GPTQ v{version} {'act-order g_idx' if ordered else 'groups in input order'}")


def _convert(t: dict[str, torch.Tensor], fmt: IntFormat, version: int) -> dict[str, torch.Tensor]:
    bits = fmt.bits
    zeros = unpack_bits(int32_bytes(t["qzeros"]), bits)  # [G, N]
    if version == 1:  # v1 stores z - 1 (modulo 2^bits)
        zeros = ((zeros.to(torch.int16) + 1) & ((1 << bits) - 1)).to(torch.uint8)
    out = {"qweight": int32_bytes(t["qweight"].T), "scales": t["scales"].T.contiguous(),
           "zeros": zeros.T.contiguous()}
    if fmt.g_idx:
        out["g_idx"] = t["g_idx"].to(torch.int32)
    return out
