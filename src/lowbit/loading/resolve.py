"""Step 1 of loading: merge the checkpoint's quantization_config with the caller's."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from lowbit.config import QuantConfig
from lowbit.errors import ConfigError
from lowbit.registry import build_config, config_from_dict

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_quantization(stored: dict | None, requested: QuantConfig | str | dict | None
                         ) -> tuple[QuantConfig | None, bool, dict[str, dict]]:
    """(config, pre_quantized, per-layer overrides).

    A stored config wins on format fields (one warning naming each differing field); loading-only fields
    (kernel, compute dtype) come from the caller; a different method is an error naming both.
    """
    if isinstance(requested, str):
        requested = build_config(requested)
    elif isinstance(requested, dict):
        requested = config_from_dict(requested)
    elif requested is not None and not isinstance(requested, QuantConfig):
        raise ConfigError(f"quantization={requested!r} is not a config; expected lowbit.config(...), a method name or None")
    if stored is None:
        return requested, False, {}
    stored = dict(stored)
    layers = stored.pop("layers", {}) or {}
    _check_layers(layers)
    saved = config_from_dict(stored)
    if requested is None:
        return saved, True, layers
    if requested.method != saved.method:
        raise ConfigError(f"the checkpoint is quantized with {saved.method!r} but quantization asks for {requested.method!r}; "
                          "load it without a quantization argument, or start from the full-precision checkpoint")
    recorded = getattr(saved, "recorded", ())  # fields a checkpoint records about itself (imported layers' origin)
    differing = [f for f in saved.format_fields() if getattr(saved, f) != getattr(requested, f) and f not in recorded]
    if differing:
        warnings.warn(f"quantization fields {differing} differ from the checkpoint's; the checkpoint's values are used "
                      f"({', '.join(f'{f}={getattr(saved, f)!r}' for f in differing)})", stacklevel=3)
    loading: dict[str, Any] = {f: getattr(requested, f) for f in saved.loading_fields()}
    return saved.replace(**loading), True, layers


def resolve_dtype(dtype: torch.dtype | str | None, config: dict) -> torch.dtype:
    """The caller's dtype, else the checkpoint's (``dtype`` / ``torch_dtype`` in config.json), else float32."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype={dtype} is not a floating-point dtype; expected float32, bfloat16 or float16")
        return dtype
    if dtype in (None, "auto"):
        dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            return torch.float32  # transformers itself falls back the same way for dtypes it cannot use
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not supported; expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


LAYER_FIELDS = ("group_size",)  # what a checkpoint may record per layer (the group-size fallback)


def _check_layers(layers: Any) -> None:
    if not isinstance(layers, dict):
        raise ConfigError(f"quantization_config.layers is {type(layers).__name__}; expected an object of layer → fields; "
                          "the checkpoint's config.json is damaged: re-save it")
    for name, fields in layers.items():
        if not isinstance(fields, dict) or set(fields) - set(LAYER_FIELDS):
            raise ConfigError(f"quantization_config.layers[{name!r}] = {fields!r}; expected an object with only "
                              f"{list(LAYER_FIELDS)}; the checkpoint's config.json is damaged: re-save it")
        group = fields.get("group_size")
        if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 1
                                  or group & (group - 1)):
            raise ConfigError(f"quantization_config.layers[{name!r}].group_size = {group!r}; expected a power of two; "
                              "the checkpoint's config.json is damaged: re-save it")
