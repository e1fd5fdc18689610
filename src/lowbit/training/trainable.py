"""Whether a quantization config trains: what transformers' ``HfQuantizer.is_trainable`` asks of a lowbit config.

A config trains when every format its method gives has a backward (``lowbit.nn.training.format_trains``: every
weight-only format; not W8A8, not fp8 with dynamic activations). ``Quantizer.is_trainable`` answers it from the
method's own ``weight_format``, so a new method needs nothing here.
"""

from __future__ import annotations

from lowbit.config import QuantConfig
from lowbit.nn.training import trainable_formats
from lowbit.registry import build_config, get

__all__ = ["config_trains", "trainable_formats"]


def config_trains(config: QuantConfig | str) -> bool:
    """True when layers quantized with ``config`` (a config or a method name) pass gradients (LoRA trains on them)."""
    if isinstance(config, str):
        config = build_config(config)
    return get(config.method).quantizer_cls(config, pre_quantized=True).is_trainable
