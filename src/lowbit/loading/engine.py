"""The streaming engine's front, shared by ``from_pretrained``, ``quantize_folder`` and ``quantize_calibrated``.

A caller opens the checkpoint (``checkpoint.open_checkpoint``) and resolves the quantization config
(``resolve.resolve_quantization``), with its own checks in between; ``prepare`` then does the rest of the
common front: the dtype, the quantizer (built, environment validated), the model's skeleton on meta with the
quantized shells. The engine's other parts:

- ``plan.Plan``: what goes where (checkpoint key → model tensor; the output's tensors in order);
- ``reader.Reader``: the one reader over the shards (NaN/Inf checked, a shard closed once read);
- ``stream``: ``load_into`` (tensors into the model) and ``output_tensors`` (the quantized model's tensors, from
  the checkpoint or from other ``Source``\\ s laid over it, such as a calibration run's finished blocks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from lowbit.config import QuantConfig
from lowbit.errors import ConfigError
from lowbit.loading.checkpoint import Checkpoint
from lowbit.loading.config_bounds import check_config_bounds
from lowbit.loading.resolve import resolve_dtype
from lowbit.loading.save import check_serializable
from lowbit.loading.skeleton import build_skeleton
from lowbit.quantizer import Quantizer
from lowbit.registry import get

CPU = torch.device("cpu")


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that this machine has, else a ConfigError naming it."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a device; expected 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "meta":
        raise ConfigError("device='meta' holds no values, so a model cannot be loaded or quantized there; expected "
                          "'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} but this torch has no usable CUDA ({torch.__version__}); "
                          "use device='cpu' or install a CUDA build of torch")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={str(device)!r} but only {torch.cuda.device_count()} GPU(s) are visible; pick one of them")
    return device


@dataclasses.dataclass
class Prepared:
    """What ``prepare`` made: the quantizer (None without a config), the dtype and the skeleton."""

    ckpt: Checkpoint
    quantizer: Quantizer | None
    dtype: torch.dtype
    model: nn.Module


def prepare(ckpt: Checkpoint, cfg: QuantConfig | None, *, device: torch.device = CPU,
            dtype: torch.dtype | str | None = None, layers: dict[str, dict] | None = None, saving: bool = False,
            tie: bool = False, **quantizer_kwargs: Any) -> Prepared:
    """The dtype (``dtype`` or the checkpoint's), the quantizer of ``cfg`` (``quantizer_kwargs`` such as
    ``pre_quantized``, per-layer overrides ``layers``; with ``saving``, one that can be saved) validated for
    ``device``, and the skeleton at that dtype with its quantized shells. ``tie`` ties the head to the embedding
    on meta (unless the quantizer ties the stored tables), so a tied head is written once, as saving does."""
    dtype = resolve_dtype(dtype, ckpt.config)
    quantizer = None
    if cfg is not None:
        quantizer = get(cfg.method).quantizer_cls(cfg, **quantizer_kwargs)
        quantizer.layers.update(layers or {})
        if saving:
            check_serializable(quantizer)
        quantizer.validate_environment(device, dtype)
        dtype = quantizer.update_dtype(dtype) or dtype
    check_config_bounds(ckpt)  # before transformers builds a skeleton of whatever size config.json asks
    model = build_skeleton(ckpt.path, ckpt.config, dtype, getattr(ckpt, "hf_config", None))  # GGUF: no config.json
    if quantizer is not None:
        quantizer.preprocess_model(model)
    if tie and not (quantizer is not None and quantizer.tied_head):
        model.tie_weights()
    return Prepared(ckpt, quantizer, dtype, model)
