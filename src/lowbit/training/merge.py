"""Merge a LoRA adapter into its quantized base and quantize the result again (``lowbit merge``).

The base loads with ``lowbit.from_pretrained``, the adapter with ``lowbit.training.load_adapter`` (a shape
mismatch is one line), ``merge_and_unload`` makes each adapted layer dense (dequantized weight + LoRA delta),
and every layer still quantized is dequantized too. That dense model is written to a temporary folder beside
the output and quantized from there by the ordinary engine (``quantize_folder``; ``quantize_calibrated`` for a
method that needs data), so the output is an ordinary lowbit folder with the base's tokenizer.

The merged weights start from the *dequantized* base, and re-quantizing them is a second rounding: a base that
was calibrated (GPTQ, AWQ) keeps none of its calibration through a data-free method, so the result has that
method's data-free quality. ``merge_adapter`` returns that remark for the caller to show.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lowbit.calibration.runner import quantize_calibrated
from lowbit.config import QuantConfig
from lowbit.loading.convert import quantize_folder
from lowbit.loading.pipeline import from_pretrained
from lowbit.loading.save import check_output, parse_size, write_folder
from lowbit.nn import QuantLinear
from lowbit.nn.holder import QuantHolder
from lowbit.registry import build_config, get
from lowbit.training.lora import load_adapter


def merged_model(base: str | Path, adapter: str | Path) -> nn.Module:
    """``base`` (a lowbit or dense folder) with ``adapter`` merged in: adapted layers dense, the rest as loaded."""
    model = from_pretrained(base)
    return load_adapter(model, adapter).merge_and_unload()


def dense_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of ``model`` as a dense checkpoint: each quantized layer's ``weight`` decoded, in the model's
    dtype; a table another layer shares (tied embeddings) once."""
    dtype = model.dtype
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        local: dict[str, torch.Tensor] = {}
        if isinstance(module, QuantHolder):
            if getattr(module, "tied_to", None) is None:
                local[dot + "weight"] = module.fmt.decode(module.canonical_tensors(), dtype)
            if isinstance(module, QuantLinear) and module.bias is not None:
                local[dot + "bias"] = module.bias
        else:
            module._save_to_state_dict(local, dot, False)
        for name, tensor in local.items():
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in owned:  # decoded tensors are fresh: only the model's own storages can be shared
                if ptr in seen:
                    continue  # tied again on load
                seen.add(ptr)
            yield name, tensor.detach().to("cpu").contiguous()


def merge_adapter(base: str | Path, adapter: str | Path, out: str | Path, quantization: QuantConfig | str, *,
                  max_shard_size: int | str = "2GB", overwrite: bool = False) -> tuple[Path, str]:
    """Merge ``adapter`` into ``base`` and quantize the merged model with ``quantization`` into ``out``.

    Returns the folder and a remark on the quality to expect (the merged weights start from the dequantized base).
    """
    cfg = build_config(quantization) if isinstance(quantization, str) else quantization
    check_output(out, overwrite)
    limit = parse_size(max_shard_size)
    model = merged_model(base, adapter)
    base_cfg = getattr(getattr(model, "lowbit_quantizer", None), "config", None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the dense folder is no lowbit folder
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.merged-", dir=parent))
    try:
        write_folder(tmp / "dense", dense_tensors(model), limit, model, tokenizer_from=base)
        del model
        if get(cfg.method).quantizer_cls.requires_calibration:
            quantize_calibrated(tmp / "dense", out, cfg, max_shard_size=max_shard_size, overwrite=overwrite)
        else:
            quantize_folder(tmp / "dense", out, cfg, max_shard_size=max_shard_size, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, remark(base_cfg, cfg)


def remark(base_cfg: QuantConfig | None, cfg: QuantConfig) -> str:
    """What quality the merged model has, given how the base and the output were quantized."""
    done = f"merged into the dequantized base and re-quantized with {cfg.method}"
    if base_cfg is None:
        return f"{done} (the base was dense)"
    calibrated = get(base_cfg.method).quantizer_cls.requires_calibration
    if calibrated and not get(cfg.method).quantizer_cls.requires_calibration:
        return (f"{done}: the base was calibrated ({base_cfg.method}) but this re-quantization uses no data, so the "
                f"merged model has {cfg.method}'s data-free quality, not {base_cfg.method}'s; to keep calibrated "
                f"quality merge with --method {base_cfg.method}")
    return f"{done}; the base was {base_cfg.method}: its rounding and this one both count"
