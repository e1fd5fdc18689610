"""AWQ checkpoints in the GEMM layout (AutoAWQ, GPTQModel): ``quant_method: awq``, 4 bits, ``version: gemm``.

Per layer: ``qweight`` int32 [K, N/8] and ``qzeros`` int32 [G, N/8], eight 4-bit values per word packed along N in
the order [0, 2, 4, 6, 1, 3, 5, 7] (nibble i holds column ``order[i]``), zero-points stored as they are (no −1; with
``zero_point: false`` they are all 8);
``scales`` [G, N] fp16 or bf16. Decoding is ``(q − z) · s``: an exact map onto lowbit's asymmetric int4
``IntFormat`` (codes repacked along K, once, at load). The GEMV layouts and kernel-specific packings are refused.
"""

from __future__ import annotations

import torch

from lowbit.errors import CheckpointError, ConfigError
from lowbit.formats import IntFormat, pack_bits, unpack_bits
from lowbit.foreign.base import (SAFETENSORS_DTYPES, LayerMap, Peek, Translation, check_dtype, int32_bytes,
                                 layers_with, require)

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds column ORDER[i]
INVERSE = tuple(ORDER.index(j) for j in range(8))  # column j is in nibble INVERSE[j]


def translate(peek: Peek, qc: dict) -> Translation:
    version = str(qc.get("version") or qc.get("format") or "gemm").lower()
    if version != "gemm":
        raise ConfigError(f"AWQ version/format {version!r} is not supported; expected 'gemm' (the GEMV, GEMV-fast and "
                          "kernel-specific layouts pack differently); re-export the model with version='gemm'")
    bits = qc.get("bits", qc.get("w_bit"))
    group = qc.get("group_size", qc.get("q_group_size"))
    if bits != 4:
        raise ConfigError(f"AWQ bits={bits!r} is not supported; expected 4")
    if not isinstance(group, int) or isinstance(group, bool) or group < 1:
        raise ConfigError(f"AWQ group_size={group!r}; expected a positive group size such as 128")
    layers = {name: _layer(peek, name, group) for name in layers_with(peek, "qweight")}
    if not layers:
        raise CheckpointError("config.json says quant_method awq but no tensor ends in .qweight; the tensors are not "
                              "an AWQ checkpoint: fix quantization_config")
    # zero_point=false models still store qzeros (2^(b-1) each, as GPTQModel writes them): decoded as stored
    return Translation("awq", f"AWQ GEMM 4-bit g{group}{'' if qc.get('zero_point', True) else ' sym'}", layers)


def _layer(peek: Peek, name: str, group: int) -> LayerMap:
    keys = require(peek, name, {"qweight": "qweight", "qzeros": "qzeros", "scales": "scales"}, "AWQ")
    for role in ("qweight", "qzeros"):
        check_dtype(peek, keys[role], ("I32",), "AWQ")
    scale_dtype = check_dtype(peek, keys["scales"], ("F16", "BF16", "F32"), "AWQ")
    k, words = peek.shape(keys["qweight"])
    groups, n = peek.shape(keys["scales"])
    if words * 8 != n or peek.shape(keys["qzeros"]) != [groups, words] or groups * group != k:
        raise CheckpointError(f"AWQ layer {name}: qweight {[k, words]}, qzeros {peek.shape(keys['qzeros'])} and scales "
                              f"{[groups, n]} are not the GEMM layout of a 4-bit g{group} layer (qweight [K, N/8], "
                              "scales [K/group, N]); a GEMV checkpoint or wrong bits/group_size in config.json")
    fmt = IntFormat(bits=4, group_size=group, symmetric=False, scale_dtype=SAFETENSORS_DTYPES[scale_dtype])
    return LayerMap(name, fmt, keys, _convert, note="AWQ GEMM, repacked along K")


def unpack_columns(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, N/8] in AWQ's column order → 4-bit values [R, N] in column order (uint8)."""
    rows = packed.shape[0]
    nibbles = unpack_bits(int32_bytes(packed), 4).view(rows, -1, 8)
    return nibbles[:, :, list(INVERSE)].reshape(rows, -1)


def pack_columns(values: torch.Tensor) -> torch.Tensor:
    """4-bit values [R, N] in column order (uint8) → int32 [R, N/8] in AWQ's column order (inverse of
    :func:`unpack_columns`)."""
    rows = values.shape[0]
    nibbles = values.reshape(rows, -1, 8)[:, :, list(ORDER)].reshape(rows, -1)  # nibble i holds column ORDER[i]
    return pack_bits(nibbles, 4).contiguous().view(torch.int32)


def _convert(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    codes = unpack_columns(t["qweight"]).T.contiguous()  # [N, K]
    return {"qweight": pack_bits(codes, 4), "scales": t["scales"].T.contiguous(),
            "zeros": unpack_columns(t["qzeros"]).T.contiguous()}
