"""lowbit formats → bitsandbytes 4-bit tensors (``quant_method: bitsandbytes``, ``load_in_4bit``), as transformers'
``save_pretrained`` writes a model loaded with a ``BitsAndBytesConfig``, for transformers' bitsandbytes loader (vLLM
serves bitsandbytes only through a plugin).

Only code-book layers with absmax blocks of 64 inputs map, byte for byte (``lowbit.foreign.bnb`` reads the same
layout): lowbit's nf4 (``nf4``) and bitsandbytes' own "fp4" code book (``fp4``; lowbit holds it only when it read
a bitsandbytes fp4 checkpoint), with or without double quantization. Per layer: ``weight`` uint8 [N·K/2, 1]
(lowbit's bytes, first code in the high nibble; bitsandbytes' blocks run over the flattened weight, which are
lowbit's per-row blocks since 64 divides K), ``weight.absmax`` (float32, or with double quantization the uint8
codes plus ``weight.nested_absmax`` per 256 and ``nested_offset`` in the quant state), ``weight.quant_map`` (the
code book), ``weight.nested_quant_map`` (the signed dynamic map) and ``weight.quant_state.bitsandbytes__<type>``
(the JSON of bitsandbytes' ``QuantState.as_dict(packed=True)`` as uint8 bytes). transformers writes block size 64
only (its ``BitsAndBytesConfig`` has no block size), so other block sizes are refused.

Refused: lowbit's fp4 (OCP E2M1, another code book than bitsandbytes' "fp4"), every integer format including int8
per channel (LLM.int8() stores ``SCB`` and decodes ``(q · SCB) · (1/127)`` in float32, which equals lowbit's
``q · scale`` in under 1% of rows of random scales for any SCB within 4 ulps of ``127 · scale``, measured), MXFP4
and fp8.
"""

from __future__ import annotations

import dataclasses
import json

import torch

from lowbit.errors import FormatError
from lowbit.formats import CodebookFormat, IntFormat, WeightFormat
from lowbit.formats.codebook import DQ_BLOCK, code_values, dynamic_map
from lowbit.qtypes import bnb_fp4, nf4

BLOCK = 64  # the only 4-bit block size transformers writes
TYPES = {nf4: "nf4", bnb_fp4: "fp4"}  # lowbit code book → bnb_4bit_quant_type
NEAREST = "quantize with nf4 block_size=64 (double_quant as wanted)"


def refusal(fmt: WeightFormat) -> str | None:
    """Why ``fmt`` has no exact bitsandbytes form (and what would map), or None when it maps."""
    if isinstance(fmt, CodebookFormat):
        if fmt.code not in TYPES:
            return (f"{fmt.describe()} is OCP E2M1 fp4, a different code book from bitsandbytes' fp4; nearest that "
                    f"maps: {NEAREST}")
        if fmt.absmax_block != BLOCK:
            return (f"{fmt.describe()} has absmax blocks of {fmt.absmax_block} and transformers writes and reads "
                    f"bitsandbytes 4-bit with blocks of {BLOCK}; nearest that maps: {NEAREST}")
        return None
    if isinstance(fmt, IntFormat) and fmt.bits == 8 and fmt.group_size is None and fmt.symmetric:
        return (f"{fmt.describe()} does not map onto LLM.int8(): bitsandbytes decodes (q * SCB) * (1/127), which "
                f"equals lowbit's q * scale in under 1% of rows; nearest that maps: {NEAREST}, or export int8 as "
                "compressed-tensors")
    return (f"{fmt.describe()} has no bitsandbytes form (bitsandbytes stores nf4 / fp4 code books and LLM.int8()); "
            f"nearest that maps: {NEAREST}, or export as compressed-tensors")


def one_scheme(layers: dict) -> CodebookFormat:
    """The one (code book, double quantization) a bitsandbytes config names for the whole model."""
    fmts = {layer.fmt for layer in layers.values()}
    if len({(f.code, f.double_quant) for f in fmts}) != 1:
        raise FormatError(f"a bitsandbytes config names one 4-bit type and one double-quant setting per model; this "
                          f"model mixes {sorted({f.describe() for f in fmts})}; {NEAREST}")
    return next(iter(fmts))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclasses.dataclass(frozen=True)
class Exporter:
    """The bitsandbytes target for a model whose full-precision tensors are ``dtype`` (bitsandbytes dequantizes
    into the dtype its quant state names, and computes in ``bnb_4bit_compute_dtype``)."""

    dtype: torch.dtype

    @staticmethod
    def refusal(fmt: WeightFormat) -> str | None:
        return refusal(fmt)

    def config(self, layers: dict, ignore: list[str]) -> dict:
        fmt = one_scheme(layers)
        # the unquantized Linears are listed even when there are none: an absent list makes transformers keep
        # its own choice (the output head) unquantized
        return {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                "bnb_4bit_quant_type": TYPES[fmt.code], "bnb_4bit_use_double_quant": fmt.double_quant,
                "bnb_4bit_compute_dtype": dtype_name(self.dtype), "bnb_4bit_quant_storage": "uint8",
                "llm_int8_skip_modules": list(ignore), "llm_int8_threshold": 6.0,
                "llm_int8_has_fp16_weight": False, "llm_int8_enable_fp32_cpu_offload": False}

    def tensors(self, fmt: WeightFormat, canonical: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A layer's canonical nf4 / fp4 tensors → its bitsandbytes tensors (suffixes after ``<module>.``)."""
        why = refusal(fmt)
        if why:
            raise FormatError(why)
        packed = canonical["qweight"]
        n, k = packed.shape[0], packed.shape[1] * 2
        kind = TYPES[fmt.code]
        state = {"quant_type": kind, "blocksize": BLOCK, "dtype": dtype_name(self.dtype), "shape": [n, k]}
        out = {"weight": packed.reshape(-1, 1), "weight.absmax": canonical["absmax"].reshape(-1),
               "weight.quant_map": code_values(fmt.code, torch.device("cpu")).clone()}
        if fmt.double_quant:
            out["weight.nested_absmax"] = canonical["absmax_scale"].float()
            out["weight.nested_quant_map"] = dynamic_map().clone()
            state.update(nested_blocksize=DQ_BLOCK, nested_dtype="float32",
                         nested_offset=float(canonical["absmax_offset"].reshape(-1)[0]))
        raw = json.dumps(state).encode("utf-8")  # bitsandbytes' pack_dict_to_tensor
        out[f"weight.quant_state.bitsandbytes__{kind}"] = torch.tensor(list(raw), dtype=torch.uint8)
        return out
