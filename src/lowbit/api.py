"""In-memory entry points: ``quantize_`` and ``inspect``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from lowbit.config import QuantConfig
from lowbit.errors import ConfigError
from lowbit.loading.pipeline import from_pretrained
from lowbit.loading.save import attach
from lowbit.nn import QuantEmbedding, QuantLinear
from lowbit.nn.holder import QuantHolder
from lowbit.registry import build_config, get


def quantize_(model: nn.Module, config: QuantConfig | str) -> nn.Module:
    """Quantize an ``nn.Module`` already in memory, in place (same rules as quantize-on-load)."""
    if isinstance(config, str):
        config = build_config(config)
    if not isinstance(config, QuantConfig):
        raise ConfigError(f"config={config!r} is not a quantization config; expected lowbit.config(...) or a method name")
    if isinstance(model, torch.nn.Linear):
        raise ConfigError(f"quantize_ got a bare {type(model).__name__}, which cannot be replaced in place; "
                          "expected a model that contains it: pass nn.Sequential(layer) or its parent module")
    quantizer = get(config.method).quantizer_cls(config)
    params = list(model.parameters())
    if not params:
        raise ConfigError(f"{type(model).__name__} has no parameters to quantize; pass a model with nn.Linear layers")
    device, dtype = params[0].device, params[0].dtype
    originals = dict(model.named_modules())
    quantizer.validate_environment(device, dtype)
    quantizer.preprocess_model(model)
    for name in quantizer.formats:
        if quantizer.tied_head and name == quantizer.tied_head[0]:
            continue
        orig, shell = originals[name], model.get_submodule(name)
        shell.load_quantized(quantizer.quantize_tensor(name, orig.weight.detach()), name)
        if isinstance(shell, QuantLinear) and orig.bias is not None:
            shell.bias = nn.Parameter(orig.bias.detach(), requires_grad=False)
        if isinstance(shell, QuantEmbedding):
            shell.out_dtype = orig.weight.dtype
    quantizer.postprocess_model(model, device, dtype)
    if hasattr(model, "config"):
        attach(model, quantizer)
    else:
        model.lowbit_quantizer = quantizer
    return model


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # linear | embedding
    method: str
    format: str
    shape: tuple[int, int]
    bits_per_weight: float
    nbytes: int
    compute_dtype: str  # what the kernel computes in (float32, bfloat16, ...); an embedding's output dtype
    kernel: str
    reason: str
    origin: str = ""  # imported layers: the source tool's format, and whether the mapping is exact


@dataclasses.dataclass(frozen=True)
class Inspection:
    method: str | None
    layers: list[LayerInfo]
    quantized_bytes: int
    total_bytes: int  # every parameter and buffer of the model

    def to_dict(self) -> dict:
        return {"method": self.method, "quantized_bytes": self.quantized_bytes, "total_bytes": self.total_bytes,
                "layers": [dataclasses.asdict(layer) for layer in self.layers]}


def inspect(model_or_path: nn.Module | str | Path, **load_kwargs) -> Inspection:
    """Per quantized layer: method, format, bits per weight (scales and zeros included), bytes, kernel and why."""
    model = model_or_path
    if not isinstance(model, nn.Module):
        model = from_pretrained(model_or_path, **load_kwargs)
    quantizer = getattr(model, "lowbit_quantizer", None)
    method = quantizer.config.method if quantizer else None
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, QuantHolder):
            continue
        tied = getattr(module, "tied_to", None)
        kernel = getattr(module, "kernel", None)
        reason = getattr(module, "kernel_reason", "") or ("table lookup" if isinstance(module, QuantEmbedding) else "")
        layers.append(LayerInfo(
            name=name, kind="embedding" if isinstance(module, QuantEmbedding) else "linear", method=method or "?",
            format=module.fmt.describe() + (f" (shares {tied})" if tied else ""), shape=module.weight_shape,
            bits_per_weight=round(module.bits_per_weight(), 4), nbytes=0 if tied else module.packed_nbytes(),
            compute_dtype=str(getattr(module, "compute_dtype", getattr(module, "out_dtype", ""))).removeprefix("torch."),
            kernel=kernel.name if kernel else ("lookup" if isinstance(module, QuantEmbedding) else "unprepared"),
            reason=reason, origin=_origin(quantizer, name)))
    total = _model_bytes(model)
    return Inspection(method, layers, sum(layer.nbytes for layer in layers), total)


def _origin(quantizer, name: str) -> str:
    origin = getattr(quantizer, "origin", None)
    return origin(name) if origin else ""


def _model_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.device, t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    for module in model.modules():  # kernel layouts live outside the buffers
        if isinstance(module, QuantLinear):
            total += sum(t.numel() * t.element_size() for t in module._prepared.values())
    return total
