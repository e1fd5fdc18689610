"""``lowbit.from_pretrained``: ARCHITECTURE.md §2-3, streaming one tensor at a time through the engine."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.config import QuantConfig
from lowbit.errors import ConfigError
from lowbit.loading.checkpoint import Checkpoint, open_checkpoint, verify_checkpoint
from lowbit.loading.engine import prepare, resolve_device
from lowbit.loading.foreign import ForeignCheckpoint, open_foreign, open_reader
from lowbit.loading.gguf import is_gguf, open_gguf
from lowbit.loading.plan import Plan
from lowbit.loading.reader import clamp_nonfinite
from lowbit.loading.resolve import resolve_quantization
from lowbit.loading.save import attach
from lowbit.loading.stream import load_into
from lowbit.loading.tensors import missing_error
from lowbit.loading.tokenizer import warn_if_no_tokenizer


def from_pretrained(path: str | Path, quantization: QuantConfig | str | None = None, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | str | None = None, device_map: str | dict | None = None,
                    max_memory: dict | None = None, verify: bool = False, progress: bool = False,
                    nonfinite: str = "error") -> nn.Module:
    """Load a checkpoint, quantizing on the fly, or a pre-quantized folder (no config needed): lowbit's own, or a
    GPTQ, AWQ, bitsandbytes or compressed-tensors one, whose layers are repacked once into lowbit formats.

    Never holds the whole model at full precision: each tensor is read, quantized on its target device,
    assigned and dropped. A NaN/Inf weight is an error naming the tensor; ``nonfinite="clamp"`` instead
    replaces NaN by 0 and ±Inf by ± the tensor's largest finite magnitude, with one warning naming the tensors.
    """
    clamp = clamp_nonfinite(nonfinite)
    if is_gguf(path):  # llama.cpp's file: seen as the lowbit folder it maps onto, the requested method applied
        ckpt = open_gguf(path, quantization)
    else:  # another tool's checkpoint folder: seen as the lowbit folder it maps onto
        ckpt = open_foreign(open_checkpoint(path))
        warn_if_no_tokenizer(ckpt.path)
    if isinstance(ckpt, ForeignCheckpoint):
        quantization = ckpt.loading_config(quantization)
    if verify:
        verify_checkpoint(ckpt.path)
    cfg, pre_quantized, layers = resolve_quantization(ckpt.quantization_config, quantization)
    device = resolve_device(device)
    job = prepare(ckpt, cfg, device=device, dtype=dtype, layers=layers, pre_quantized=pre_quantized)
    model, quantizer, dtype = job.model, job.quantizer, job.dtype
    placement = _placement(model, quantizer, device, dtype, device_map, max_memory)
    with open_reader(ckpt, clamp=clamp, progress=progress, desc="loading") as reader:
        load_into(Plan(model, ckpt, quantizer), reader, placement.device_of, dtype)
    if quantizer is None or not quantizer.tied_head:
        model.tie_weights()
    _check_complete(model, ckpt)
    if quantizer is not None:
        quantizer.postprocess_model(model, placement.compute_device(), dtype)
        attach(model, quantizer)
    if placement.multi:
        from accelerate import dispatch_model

        dispatch_model(model, placement.device_map)
    if placement.device_map is not None:
        model.hf_device_map = placement.device_map  # as transformers sets it for any device_map
    model.lowbit_source = str(ckpt.path)
    model.eval()
    return model


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
        if quantizer is None or not quantizer.tied_head:  # shared weights are placed together (and accelerate
            model.tie_weights()                           # checks they are tied); a quantized table is tied already
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
        # The shells hold meta buffers of their packed shapes, so these sizes are the quantized ones.
        with _quiet_untied_warning(quantizer is not None and bool(quantizer.tied_head)):
            device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                               dtype=dtype)
    if not isinstance(device_map, dict):
        raise ConfigError(f"device_map={device_map!r} is not supported; expected 'auto' or a dict of module → device")
    if any(v == "disk" for v in device_map.values()):
        raise ConfigError("device_map places modules on 'disk', which lowbit does not support; raise max_memory or "
                          "use a stronger quantization")
    return _Placement(device, device_map)


@contextlib.contextmanager
def _quiet_untied_warning(tied_tables: bool):
    """accelerate looks for tied *parameters*; a quantized shared table is tied through its buffers, so its
    "weights are not tied" message would be false: filtered while the map is computed, only then."""
    log = logging.getLogger("accelerate.utils.modeling")
    drop = lambda record: not (tied_tables and "weights are not tied" in record.getMessage())  # noqa: E731
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def _check_complete(model: nn.Module, ckpt: Checkpoint) -> None:
    missing = [n for n, t in model.state_dict(keep_vars=True).items() if t is not None and t.device.type == "meta"]
    if missing:
        raise missing_error(ckpt, missing)
