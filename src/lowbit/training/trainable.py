"""Whether a quantization config trains: what transformers' ``HfQuantizer.is_trainable`` asks of a lowbit config.

A config trains when the format its method gives a Linear has a backward (``lowbit.nn.training.format_trains``:
every weight-only format; not W8A8, not fp8 with dynamic activations). The format is asked of the method's own
quantizer for a probe Linear of 4096 x 4096 (every group size divides it), so a new method needs nothing here.
"""

from __future__ import annotations

from torch import nn

from lowbit.config import QuantConfig
from lowbit.nn.training import format_trains, trainable_formats
from lowbit.registry import build_config, get

__all__ = ["config_trains", "trainable_formats"]

PROBE = 4096


def config_trains(config: QuantConfig | str) -> bool:
    """True when layers quantized with ``config`` (a config or a method name) pass gradients (LoRA trains on them)."""
    if isinstance(config, str):
        config = build_config(config)
    quantizer = get(config.method).quantizer_cls(config, pre_quantized=True)
    probe = nn.Linear(PROBE, PROBE, bias=False, device="meta")
    return format_trains(quantizer.weight_format("probe", probe))
