"""``lowbit.from_pretrained``: DESIGN.md §3, streaming one tensor at a time."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.config import QuantConfig
from lowbit.errors import ConfigError
from lowbit.loading.checkpoint import Checkpoint, iter_tensors, open_checkpoint, verify_checkpoint
from lowbit.loading.resolve import resolve_dtype, resolve_quantization
from lowbit.loading.skeleton import build_skeleton
from lowbit.loading.tokenizer import warn_if_no_tokenizer
from lowbit.loading.tensors import (
    NONFINITE,
    check_finite,
    check_weight_shape,
    converted,
    ignore_patterns,
    key_mapper,
    missing_error,
    route,
    tied_head_error,
    unexpected_error,
    warn_clamped,
)
from lowbit.quantizer import Quantizer
from lowbit.registry import get
from lowbit.utils import release_freed_memory


def from_pretrained(path: str | Path, quantization: QuantConfig | str | None = None, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | str | None = None, device_map: str | dict | None = None,
                    max_memory: dict | None = None, verify: bool = False, progress: bool = False,
                    nonfinite: str = "error") -> nn.Module:
    """Load a checkpoint, quantizing on the fly, or a pre-quantized lowbit folder (no config needed).

    Never holds the whole model at full precision: each tensor is read, quantized on its target device,
    assigned and dropped. A NaN/Inf weight is an error naming the tensor; ``nonfinite="clamp"`` instead
    replaces NaN by 0 and ±Inf by ± the tensor's largest finite magnitude, with one warning naming the tensors.
    """
    if nonfinite not in NONFINITE:
        raise ConfigError(f"nonfinite={nonfinite!r} is not valid; expected one of {list(NONFINITE)}")
    ckpt = open_checkpoint(path)
    warn_if_no_tokenizer(ckpt.path)
    if verify:
        verify_checkpoint(ckpt.path)
    cfg, pre_quantized, layers = resolve_quantization(ckpt.quantization_config, quantization)
    device = _device(device)
    dtype = resolve_dtype(dtype, ckpt.config)
    quantizer = None
    if cfg is not None:
        quantizer = get(cfg.method).quantizer_cls(cfg, pre_quantized=pre_quantized)
        quantizer.layers.update(layers)
        quantizer.validate_environment(device, dtype)
        dtype = quantizer.update_dtype(dtype) or dtype
    model = build_skeleton(ckpt.path, ckpt.config, dtype)
    if quantizer is not None:
        quantizer.preprocess_model(model)
    placement = _placement(model, quantizer, device, dtype, device_map, max_memory)
    _stream(model, ckpt, quantizer, placement, dtype, progress, nonfinite == "clamp")
    if quantizer is None or not quantizer.tied_head:
        _check_tied_head(model, ckpt)
        model.tie_weights()
    _check_complete(model, ckpt)
    if quantizer is not None:
        quantizer.postprocess_model(model, placement.compute_device(), dtype)
        attach(model, quantizer)
    if placement.multi:
        from accelerate import dispatch_model

        dispatch_model(model, placement.device_map)
    model.lowbit_source = str(ckpt.path)
    model.eval()
    return model


def attach(model: nn.Module, quantizer: Quantizer) -> None:
    """Record the quantization on the model so saving writes it; route ``model.save_pretrained`` to lowbit."""
    from lowbit.loading.save import save_pretrained

    qc = quantizer.config.to_dict()
    if quantizer.layers:
        qc["layers"] = {k: dict(v) for k, v in sorted(quantizer.layers.items())}
    model.config.quantization_config = qc
    model.lowbit_quantizer = quantizer
    model.save_pretrained = types.MethodType(lambda self, out, **kw: save_pretrained(self, out, **kw), model)


def _device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a device; expected 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} but this torch has no usable CUDA ({torch.__version__}); "
                          "use device='cpu' or install a CUDA build of torch")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={str(device)!r} but only {torch.cuda.device_count()} GPU(s) are visible; pick one of them")
    return device


class _Placement:
    def __init__(self, device: torch.device, device_map: dict[str, Any] | None) -> None:
        self.device, self.device_map = device, device_map
        self.multi = bool(device_map) and len({str(v) for v in device_map.values()}) > 1
        self._prefixes = sorted(device_map, key=len, reverse=True) if device_map else []

    def compute_device(self) -> torch.device:
        """The device whose compute dtype the quantized layers take: a GPU of the map if any, else the CPU."""
        if not self.multi:
            return self.device
        gpus = [self.device_of(name) for name in self.device_map if self.device_of(name).type == "cuda"]
        return gpus[0] if gpus else torch.device("cpu")

    def device_of(self, name: str) -> torch.device:
        for prefix in self._prefixes:
            if prefix == "" or name == prefix or name.startswith(prefix + "."):
                target = self.device_map[prefix]
                return torch.device(f"cuda:{target}" if isinstance(target, int) else target)
        return self.device


def _placement(model, quantizer, device, dtype, device_map, max_memory) -> _Placement:
    if device_map is None:
        return _Placement(device, None)
    if quantizer is not None:
        device_map = quantizer.update_device_map(device_map)
        max_memory = quantizer.adjust_max_memory(max_memory)
    if isinstance(device_map, str):
        from accelerate import infer_auto_device_map
        from accelerate.utils import get_balanced_memory

        if device_map not in ("auto", "balanced", "sequential"):
            raise ConfigError(f"device_map={device_map!r} is not supported; expected 'auto', 'balanced', 'sequential' or a dict")
        no_split = getattr(model, "_no_split_modules", None) or []
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
        # The shells hold meta buffers of their packed shapes, so these sizes are the quantized ones.
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    if not isinstance(device_map, dict):
        raise ConfigError(f"device_map={device_map!r} is not supported; expected 'auto' or a dict of module → device")
    if any(v == "disk" for v in device_map.values()):
        raise ConfigError("device_map places modules on 'disk', which lowbit does not support; raise max_memory or "
                          "use a stronger quantization")
    return _Placement(device, device_map)


def _stream(model, ckpt: Checkpoint, quantizer, placement: _Placement, dtype, progress: bool, clamp: bool) -> None:
    modules = dict(model.named_modules())
    to_model = key_mapper(model, list(ckpt.weight_map))
    ignore = ignore_patterns(model)
    unexpected, clamped, bar = [], {}, tqdm(total=len(ckpt.weight_map), desc="loading", unit="tensor", disable=not progress)
    for key, tensor in iter_tensors(ckpt):
        bar.update()
        name = to_model(key)
        module_name, _, attr = name.rpartition(".")
        module = modules.get(module_name)
        target = placement.device_of(name)
        tensor = check_finite(key, tensor, clamp, clamped)
        kind = route(module, attr, key, quantizer, ignore)
        if kind == "stored":
            module.set_quant_tensor(attr, tensor.to(target, copy=True), module_name)
        elif kind == "quantize":
            check_weight_shape(module, key, tensor)
            module.load_quantized(quantizer.quantize_tensor(module_name, tensor.to(target)), module_name)
            del tensor
            release_freed_memory()  # else the freed temporaries fragment the heap between packed weights
        elif kind in ("param", "buffer"):
            _assign(module, attr, tensor, target, dtype, key, is_param=kind == "param")
        elif kind == "unexpected":
            unexpected.append(key)
        tensor = None
    bar.close()
    release_freed_memory()
    warn_clamped(clamped, stacklevel=4)
    if unexpected:
        raise unexpected_error(ckpt, model, unexpected)


def _assign(module: nn.Module, attr: str, tensor: torch.Tensor, device, dtype, key: str, is_param: bool) -> None:
    old = module._parameters[attr] if is_param else module._buffers[attr]
    # an owned copy: a tensor read from a shard may still be a view of the memory-mapped file
    tensor = converted(old, tensor, dtype, key).to(device, copy=True)
    if is_param:
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
    else:
        module._buffers[attr] = tensor


def _check_tied_head(model: nn.Module, ckpt: Checkpoint) -> None:
    """A config that ties the embeddings, over a checkpoint whose head differs from them, would silently drop
    the head: refuse it."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    hw, ew = getattr(head, "weight", None), getattr(emb, "weight", None)
    if not isinstance(hw, torch.Tensor) or not isinstance(ew, torch.Tensor) or hw is ew or "meta" in (
            hw.device.type, ew.device.type) or hw.shape != ew.shape:
        return
    if not torch.equal(hw, ew.to(hw.device)):
        raise tied_head_error(ckpt)


def _check_complete(model: nn.Module, ckpt: Checkpoint) -> None:
    missing = [n for n, t in model.state_dict(keep_vars=True).items() if t is not None and t.device.type == "meta"]
    if missing:
        raise missing_error(ckpt, missing)
