"""FP8 (e4m3fn) weights (``fp8``): weight-only, or W8A8 with dynamic per-token fp8 activations.

Scales are float32 ``amax / 448`` per output channel (``weight_scale="channel"``) or per 128x128 tile
(``weight_scale="block"``, the DeepSeek-V3 / vLLM layout). See lowbit.formats.fp8 for what is stored.
"""

from __future__ import annotations

import dataclasses
import enum

import torch
from torch import nn

from lowbit.config import QuantConfig
from lowbit.errors import DependencyError
from lowbit.formats import Fp8Format
from lowbit.quantizer import Quantizer
from lowbit.registry import register_method

TILE = 128  # tile side of weight_scale="block"


class WeightScale(str, enum.Enum):
    """Granularity of the weight scales."""

    CHANNEL = "channel"  # one float32 scale per output channel
    BLOCK = "block"  # one float32 scale per 128x128 tile


class Activations(str, enum.Enum):
    """What happens to the activations at run time."""

    NONE = "none"  # weight-only: W is dequantized to the compute dtype
    DYNAMIC = "dynamic"  # W8A8: each token's activations are cast to fp8 with their own amax / 448 scale


@dataclasses.dataclass(frozen=True)
class Fp8Config(QuantConfig):
    """FP8 e4m3fn weights, per-channel or 128x128-block scales; optional dynamic fp8 activations (W8A8)."""

    method = "fp8"
    version = 1

    weight_scale: WeightScale = WeightScale.CHANNEL
    activations: Activations = Activations.NONE
    # No validate(): both fields are str-Enums, so QuantConfig's coercion already refuses any other value with
    # "fp8.<field>=<value> is not valid; expected one of [...]".


class Fp8Quantizer(Quantizer):
    config_cls = Fp8Config

    def validate_environment(self, device: torch.device, dtype: torch.dtype | None) -> None:
        super().validate_environment(device, dtype)
        if not hasattr(torch, "float8_e4m3fn"):
            raise DependencyError(f"method 'fp8' needs torch.float8_e4m3fn, which torch {torch.__version__} lacks; "
                                  "upgrade torch: pip install 'torch>=2.1'")

    def weight_format(self, name: str, module: nn.Linear) -> Fp8Format:
        cfg = self.config
        tile = TILE if cfg.weight_scale is WeightScale.BLOCK else None
        return Fp8Format(tile=tile, activations=cfg.activations.value)


register_method(Fp8Config, Fp8Quantizer)
