"""bitsandbytes checkpoints written by transformers (``quant_method: bitsandbytes``): 4-bit nf4 / fp4 with or without
double quantization, and LLM.int8().

4-bit, per layer ``<m>.weight`` (uint8 [N·K/2, 1], the first code of each byte in the high nibble), ``.absmax``
(float32 per block, or uint8 codes with double quantization plus ``.nested_absmax`` per 256 and the offset in the
quant state), ``.quant_map`` (the code book), ``.nested_quant_map`` and ``.quant_state.bitsandbytes__<type>`` (JSON
bytes: shape, blocksize, nested_offset). nf4 is byte for byte lowbit's nf4 ``CodebookFormat``; bnb's "fp4" is its
own code book (``lowbit.qtypes.bnb_fp4``), not OCP E2M1. Blocks run over the flattened weight, so they map onto
lowbit's per-row blocks when the block size divides K. Both code books are checked against the stored quant_map.

8-bit, per layer ``<m>.weight`` int8 [N, K] and ``<m>.SCB`` float32 [N] (``w = q · SCB / 127``): lowbit's int8
per-channel symmetric format with ``scale = SCB / 127``, which may round differently from bitsandbytes'
``(q · SCB) · (1/127)`` in the last bit: mapped, marked inexact.
"""

from __future__ import annotations

import json

import torch

from lowbit.errors import CheckpointError, ConfigError
from lowbit.formats import CodebookFormat, IntFormat
from lowbit.formats.codebook import DQ_BLOCK, code_values, dynamic_map
from lowbit.foreign.base import LayerMap, Peek, Translation, check_dtype, layers_with, require
from lowbit.qtypes import bnb_fp4, nf4

BOOKS = {"nf4": nf4, "fp4": bnb_fp4}
STATE = "weight.quant_state.bitsandbytes__"


def translate(peek: Peek, qc: dict) -> Translation:
    if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
        layers = {name: _int8(peek, name) for name in layers_with(peek, "SCB")}
        detail = "LLM.int8() per-row absmax"
    elif qc.get("load_in_4bit") or qc.get("_load_in_4bit"):
        kind = qc.get("bnb_4bit_quant_type", "fp4")
        if kind not in BOOKS:
            raise ConfigError(f"bitsandbytes bnb_4bit_quant_type={kind!r} is not supported; expected nf4 or fp4")
        layers = {name: _four_bit(peek, name, kind) for name in layers_with(peek, STATE + kind)}
        detail = f"{kind}{' double-quant' if qc.get('bnb_4bit_use_double_quant') else ''}"
    else:
        raise ConfigError("bitsandbytes quantization_config has neither load_in_4bit nor load_in_8bit; expected a "
                          "checkpoint saved by transformers with a BitsAndBytesConfig")
    if not layers:
        raise CheckpointError(f"config.json says bitsandbytes {detail} but no layer holds its tensors; the tensors are "
                              "not the format config.json names")
    return Translation("bitsandbytes", detail, layers)


def quant_state(peek: Peek, key: str) -> dict:
    try:
        state = json.loads(bytes(peek.read(key).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{key} is not bitsandbytes' JSON quant state; the checkpoint is damaged") from None
    if not isinstance(state, dict) or not isinstance(state.get("shape"), list) or len(state["shape"]) != 2:
        raise CheckpointError(f"{key} = {state!r} lacks a 2-d shape; expected bitsandbytes' quant state of a Linear")
    return state


def _four_bit(peek: Peek, name: str, kind: str) -> LayerMap:
    state = quant_state(peek, f"{name}.{STATE}{kind}")
    n, k = state["shape"]
    block = state.get("blocksize")
    double = "nested_offset" in state
    roles = {"weight": "weight", "absmax": "weight.absmax", "quant_map": "weight.quant_map",
             "state": STATE + kind}
    if double:
        roles.update(nested_absmax="weight.nested_absmax", nested_quant_map="weight.nested_quant_map")
    keys = require(peek, name, roles, "bitsandbytes")
    if not isinstance(block, int) or k % block or (double and state.get("nested_blocksize") != DQ_BLOCK):
        raise CheckpointError(f"bitsandbytes layer {name}: blocksize {block} over {k} inputs (nested "
                              f"{state.get('nested_blocksize')}); expected a block size dividing K and nested blocks "
                              f"of {DQ_BLOCK}, which lowbit's per-row blocks can hold; re-quantize from full precision")
    book = BOOKS[kind]
    if not torch.equal(peek.read(keys["quant_map"]).float(), code_values(book, torch.device("cpu"))):
        raise CheckpointError(f"{keys['quant_map']} is not bitsandbytes' {kind} code book; expected the values of "
                              f"lowbit.qtypes.{book.name}; the checkpoint uses a code book lowbit lacks")
    if double and not torch.equal(peek.read(keys["nested_quant_map"]).float(), dynamic_map()):
        raise CheckpointError(f"{keys['nested_quant_map']} is not bitsandbytes' signed dynamic map; expected the map "
                              "lowbit.formats.codebook.dynamic_map gives; the checkpoint is damaged")
    fmt = CodebookFormat(code=book, absmax_block=block, double_quant=double)
    offset = torch.tensor([float(state.get("nested_offset", 0.0))], dtype=torch.float32)

    def convert(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {"qweight": t["weight"].contiguous().view(torch.uint8).reshape(n, k // 2),
               "absmax": t["absmax"].reshape(n, k // block)}
        if double:
            out.update(absmax_scale=t["nested_absmax"].float(), absmax_offset=offset.clone())
        return out

    return LayerMap(name, fmt, keys, convert, note=f"bitsandbytes {kind} blocksize {block}")


def _int8(peek: Peek, name: str) -> LayerMap:
    roles = {"weight": "weight", "SCB": "SCB"}
    if f"{name}.weight_format" in set(peek.keys):
        roles["weight_format"] = "weight_format"
    keys = require(peek, name, roles, "bitsandbytes")
    check_dtype(peek, keys["weight"], ("I8",), "bitsandbytes int8")
    check_dtype(peek, keys["SCB"], ("F32",), "bitsandbytes int8")
    if "weight_format" in keys and int(peek.read(keys["weight_format"]).reshape(-1)[0]) != 0:
        raise CheckpointError(f"{keys['weight_format']} names a tiled int8 layout; expected 0 (row-major), the only "
                              "one transformers saves")
    fmt = IntFormat(bits=8, group_size=None, symmetric=True)

    def convert(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"qweight": t["weight"], "scales": (t["SCB"].float() / 127).reshape(-1, 1)}

    return LayerMap(name, fmt, keys, convert, exact=False,
                    note="scale SCB/127 in float32; bitsandbytes computes (q*SCB)*(1/127), which may differ in the "
                         "last bit")
