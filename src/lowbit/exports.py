"""``lowbit.export(src, out, format=...)``: a lowbit model written in another tool's layout, for the servers that
read it (vLLM above all). Each layer maps exactly or the export is refused, naming the layer, the reason and the
nearest lowbit format that would map. Targets: ``compressed-tensors`` (``lowbit.foreign.export_ct``, the default)
``gptq`` (``lowbit.foreign.export_gptq``: symmetric integer layers only), ``awq`` (``lowbit.foreign.export_awq``:
4-bit grouped integer layers), ``bnb`` (``lowbit.foreign.export_bnb``: nf4 with blocks of 64, as transformers'
bitsandbytes 4-bit) and ``gguf`` (``lowbit.foreign.export_gguf``: one .gguf file, int4 / int8 g32 as
Q4_0 / Q8_0, Llama-family models)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import ConfigError, FormatError
from lowbit.foreign import export_awq, export_bnb, export_ct, export_gguf, export_gptq
from lowbit.loading.pipeline import from_pretrained
from lowbit.loading.save import parse_size, write_folder
from lowbit.nn import QuantEmbedding, QuantLinear

TARGETS = {"compressed-tensors": export_ct, "gptq": export_gptq, "awq": export_awq, "bnb": export_bnb,
           "bitsandbytes": export_bnb, "gguf": export_gguf}


def export(src: str | Path | nn.Module, out: str | Path, format: str = "compressed-tensors", *,
           overwrite: bool = False, max_shard_size: int | str = "2GB") -> Path:
    """Write the lowbit model ``src`` (a folder, or a model loaded by lowbit) to ``out`` in ``format`` (for gguf,
    ``out`` is the .gguf file)."""
    if format not in TARGETS:
        raise ConfigError(f"export format {format!r} is unknown; expected one of {list(TARGETS)}")
    model = src if isinstance(src, nn.Module) else from_pretrained(src)
    if getattr(model, "lowbit_quantizer", None) is None:
        raise ConfigError(f"{src} is not quantized by lowbit; expected a lowbit model: quantize it first "
                          "(lowbit quantize SRC OUT --method int4)")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    tables = [n for n, m in model.named_modules() if isinstance(m, QuantEmbedding) or
              (isinstance(m, QuantLinear) and getattr(m, "tied_to", None))]
    if tables:
        raise FormatError(f"{tables[0]} is an int8 embedding table, which {format} cannot hold; expected "
                          "full-precision embeddings: quantize with quantize_embeddings=False and "
                          "quantize_lm_head=False")
    target = TARGETS[format]
    if target is export_bnb:  # its quant state names the dtype bitsandbytes dequantizes into
        target = export_bnb.Exporter(model.dtype)
    refused = [(n, target.refusal(m.fmt)) for n, m in layers.items() if target.refusal(m.fmt)]
    if refused:
        more = f" (and {len(refused) - 1} more layers)" if len(refused) > 1 else ""
        raise FormatError(f"cannot export {refused[0][0]} as {format}{more}: {refused[0][1]}")
    if format == "gguf":
        return export_gguf.write(model, layers, Path(out), overwrite, getattr(model, "lowbit_source", None))
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, QuantLinear)]
    config = target.config(layers, ignore)
    old = model.config.quantization_config
    model.config.quantization_config = config
    try:
        return write_folder(out, _tensors(model, layers, target, format), parse_size(max_shard_size), model,
                            getattr(model, "lowbit_source", None), overwrite=overwrite)
    finally:
        model.config.quantization_config = old


def _tensors(model: nn.Module, layers: dict[str, QuantLinear], target,
             format: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The exported state: each quantized layer's tensors in the target's layout, the rest as the model holds it
    (a tied tensor once)."""
    seen: set[int] = set()
    done: set[str] = set()
    for key, tensor in model.state_dict().items():
        module = key.rpartition(".")[0]
        if module in layers:
            if module not in done:
                done.add(module)
                layer = layers[module]
                try:
                    stored = target.tensors(layer.fmt, layer.canonical_tensors())
                except FormatError as e:
                    raise FormatError(f"cannot export {module} as {format}: {e}") from None
                for suffix, t in stored.items():
                    yield f"{module}.{suffix}", t.detach().to("cpu").contiguous()
                if layer.bias is not None:
                    yield f"{module}.bias", layer.bias.detach().to("cpu").contiguous()
            continue
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            continue  # tied weights: written once, tied again on load
        seen.add(ptr)
        yield key, tensor.detach().to("cpu").contiguous()
