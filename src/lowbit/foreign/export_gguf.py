"""lowbit formats → a GGUF file (llama.cpp), written with the ``gguf`` package, for Llama-family models.

Only the lowbit layers whose values GGUF holds bit for bit are written (``lowbit.foreign.gguf`` reads them back the
same way):

- int4 g32 with fp16 scales, symmetric (codes c → q = c + 8) or asymmetric with every zero-point 8 (what lowbit reads
  from a Q4_0 file) → **Q4_0**: per block of 32 inputs ``d`` fp16, then 16 bytes whose low nibbles are elements 0..15
  and high nibbles 16..31; ``w = d · (q − 8)``.
- int8 g32 with fp16 scales, symmetric, or asymmetric with every zero-point 128 → **Q8_0**: ``d`` fp16, 32 int8
  ``q``; ``w = d · q``.

Everything else is refused, naming the nearest format that maps: Q4_1's offset ``m`` is one fp16 value where lowbit's
``−z · s`` is a product that fp16 rounds, so asymmetric int4 is not exact; other group sizes and bit widths have no
GGUF type. q_proj / k_proj rows are permuted as llama.cpp's converter does (``permute``); tensor names come from the
``gguf`` package's name map; norms and full-precision tensors are written as stored (bf16 as f32); the tokenizer
comes from the model's folder (``lowbit.foreign.gguf_vocab``). The file is written beside ``out`` and renamed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowbit.errors import ConfigError, FormatError
from lowbit.formats import IntFormat, WeightFormat
from lowbit.foreign.export_common import int_refusal, integer_zeros, unsigned_codes
from lowbit.foreign.gguf import BLOCK

TYPES = {4: "Q4_0", 8: "Q8_0"}
ARCHS = {"llama": "llama"}  # config.model_type → GGUF architecture (llama.cpp's Llama graph)


def refusal(fmt: WeightFormat) -> str | None:
    why = int_refusal(fmt, "GGUF", (torch.float16,))
    if why:
        return why
    if fmt.bits not in TYPES or fmt.group_size != BLOCK or fmt.g_idx:
        return (f"{fmt.describe()} has no GGUF type that holds it exactly (Q4_0 and Q8_0 are 4 / 8 bits in groups of "
                f"{BLOCK} inputs in input order); quantize with int4 or int8, group_size={BLOCK}, symmetric=True")
    return None


def blocks(fmt: IntFormat, canonical: dict[str, torch.Tensor]) -> tuple[str, np.ndarray]:
    """A layer's canonical tensors → its GGUF type and raw bytes [N, blocks · bytes per block]."""
    why = refusal(fmt)
    if why:
        raise FormatError(why)
    mid = 1 << (fmt.bits - 1)
    zeros = integer_zeros(fmt, canonical)
    if not bool((zeros == mid).all()):
        raise FormatError(f"{fmt.describe()} has zero-points other than {mid}, and {TYPES[fmt.bits]} stores none "
                          f"(its zero is {mid}); the nearest GGUF type, Q4_1, would round them; quantize with "
                          "symmetric=True")
    codes = unsigned_codes(fmt, canonical)  # [N, K], zero-point 2^(b-1) throughout
    n, k = codes.shape
    codes = codes.reshape(n, k // BLOCK, BLOCK)
    if fmt.bits == 4:
        qs = codes[..., : BLOCK // 2] | (codes[..., BLOCK // 2:] << 4)  # elements 0..15 low nibbles, 16..31 high
    else:
        qs = (codes.to(torch.int16) - mid).to(torch.int8).view(torch.uint8)
    d = canonical["scales"].to(torch.float16).contiguous().view(torch.uint8).reshape(n, k // BLOCK, 2)
    return TYPES[fmt.bits], torch.cat([d, qs], dim=-1).reshape(n, -1).numpy()


def permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order of q_proj / k_proj (its converter's ``permute``): within each head, the two rotary
    halves interleaved. Rows are whole (quantized blocks run along the inputs), so raw bytes permute alike."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def metadata(writer, config, layers: dict) -> None:
    """Llama hyper-parameters under the names llama.cpp reads."""
    import gguf

    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if kind != "default":
        raise ConfigError(f"rope scaling {kind!r} is not written to GGUF by lowbit; expected the default rope; export "
                          "as compressed-tensors")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    q4 = any(layer.fmt.bits == 4 for layer in layers.values())
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if q4 else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def tensors(model: nn.Module, layers: dict) -> list[tuple[str, np.ndarray, str | None]]:
    """(GGUF name, array, GGUF quantized type or None) for every tensor, in the model's order; a tied tensor once."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"q_proj": config.num_attention_heads,
             "k_proj": getattr(config, "num_key_value_heads", None) or config.num_attention_heads}
    out, seen, done = [], set(), set()
    for key, tensor in model.state_dict().items():
        module, _, suffix = key.rpartition(".")
        if module in layers:
            if module in done:
                continue
            done.add(module)
            layer = layers[module]
            kind, data = blocks(layer.fmt, layer.canonical_tensors())
            items = [(f"{module}.weight", data, kind)]
            if layer.bias is not None:
                items.append((f"{module}.bias", layer.bias.detach().float().cpu().numpy(), None))
        else:
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in seen:
                continue  # tied: llama.cpp uses token_embd when output.weight is absent
            seen.add(ptr)
            t = tensor.detach().cpu()
            items = [(key, (t if t.dtype in (torch.float32, torch.float16) else t.float()).numpy(), None)]
        for name, data, kind in items:
            gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ConfigError(f"tensor {name} has no GGUF name for a llama model; expected the tensors of "
                                  "LlamaForCausalLM; export as compressed-tensors")
            proj = name.rpartition(".")[0].rpartition(".")[2]
            if proj in heads:
                data = permute(data, heads[proj])
            out.append((gguf_name, data, kind))
    return out


def write(model: nn.Module, layers: dict, out: Path, overwrite: bool, tokenizer_from: str | None) -> Path:
    """The whole GGUF file: every layer converted first (a refusal leaves nothing behind), then written to a
    temporary file beside ``out`` and renamed onto it."""
    import gguf

    from lowbit.foreign.gguf_vocab import add_vocab

    arch = ARCHS.get(getattr(model.config, "model_type", None))
    if arch is None:
        raise ConfigError(f"GGUF export writes Llama-family models (model_type {sorted(ARCHS)}); this one is "
                          f"{model.config.model_type!r}; export as compressed-tensors")
    out = Path(out)
    if out.suffix.lower() != ".gguf" or out.is_dir():
        raise ConfigError(f"GGUF export writes one file; expected OUT to be a file name ending in .gguf, got {out}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; expected a new file name, or pass overwrite=True (--overwrite)")
    items = tensors(model, layers)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        writer = gguf.GGUFWriter(None, arch)
        metadata(writer, model.config, layers)
        if tokenizer_from:
            add_vocab(writer, Path(tokenizer_from), model.config.vocab_size)
        for name, data, kind in items:
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[kind] if kind else None)
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
