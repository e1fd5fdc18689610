"""SmoothQuant (Xiao et al., 2022): W8A8 int8, with activation outliers migrated into the weights first.

Calibrated block by block (``lowbit quantize SRC OUT --method smoothquant --calib TEXT``). For every group of
Linears that read one module's output (``Balance`` data in ``lowbit/archs.py``), per input channel j::

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(max|X_j| over the calibration tokens, max|W_j| over the rows of all the group's Linears), folded like AWQ's
scales: the previous module's output (a norm's weight, honoring Gemma's ``1 + w``, or a Linear's rows) is divided
by s and the Linears' columns multiplied by it, which leaves the block's function unchanged while evening out the
activations' channels. ``alpha`` (migration strength, default 0.5) moves more of the difficulty into the weights
as it grows. Then weights are int8, symmetric per output channel, and activations are quantized per token at run
time (absmax / 127): the ``W8A8Format`` format, see lowbit.formats.w8a8.

Speed: on CPUs ``torch._int_mm`` is slower than a float32 matmul of the same shape (measured 169 ms vs 13 ms at
M=32, K=N=4096 on this project's 2-core machine), so the format runs on its pure-torch reference kernel (exact
int32 accumulation via float32 matmuls); on the CPU SmoothQuant is for quality, speed is a GPU matter.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from lowbit.calibration.balance import balance_groups, channel_stat, fold, group_inputs, require_balance
from lowbit.calibration.inputs import BlockInputs, Reference
from lowbit.calibration.method import CalibratedQuantizer, Stored, use_dequantized
from lowbit.config import QuantConfig
from lowbit.errors import ConfigError
from lowbit.formats import W8A8Format
from lowbit.formats.w8a8 import fake_quantize_rows
from lowbit.registry import register_method

FORMAT = W8A8Format()


@dataclasses.dataclass(frozen=True)
class SmoothQuantConfig(QuantConfig):
    """SmoothQuant W8A8: int8 per-channel weights, dynamic per-token int8 activations (needs calibration)."""

    method = "smoothquant"
    version = 1

    alpha: float = 0.5  # migration strength: 0 leaves activations as they are, 1 moves all their range to weights

    def validate(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"smoothquant.alpha={self.alpha} is out of range; expected 0 <= alpha <= 1 "
                              "(usually 0.5; up to 0.8 for models with strong activation outliers)")


class SmoothQuantQuantizer(CalibratedQuantizer):
    config_cls = SmoothQuantConfig

    def __init__(self, config: SmoothQuantConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.timings: dict[str, float] = {}  # block → seconds
        self.spread: dict[str, tuple[float, float]] = {}  # group → activation max/median over channels, before, after

    def weight_format(self, name: str, module: nn.Linear) -> W8A8Format:
        return FORMAT

    def preprocess_model(self, model: nn.Module) -> None:
        super().preprocess_model(model)
        if not self.pre_quantized:  # before any calibration work: an unsupported architecture fails here
            require_balance(self.model_type, self.config.method)

    def calibrate_block(self, block: nn.Module, prefix: str, inputs: BlockInputs,
                        reference: Reference | None = None) -> Stored:
        """Smooth every group, quantize every Linear, and make each compute as W8A8 does (its input rounded
        per token to int8 by a forward pre-hook), so the next block is calibrated on what the model computes."""
        t0 = time.perf_counter()
        linears = self.block_linears(block, prefix)
        for group in balance_groups(block, prefix, self.model_type, linears, self.config.method):
            x_max = channel_stat(group_inputs(block, inputs, group)[0], "max")
            w_max = torch.cat([m.weight.detach().float().abs() for m in group.linears.values()]).amax(0)
            s = smooth_scale(x_max, w_max, self.config.alpha)
            fold(group, s)
            self.spread[group.prev_name] = (_spread(x_max), _spread(x_max / s))
        stored: Stored = {}
        for name, linear in linears.items():
            stored[name] = {k: v.cpu() for k, v in FORMAT.encode(linear.weight.detach()).items()}
            use_dequantized(linear, FORMAT, stored[name])
            linear.register_forward_pre_hook(lambda _, args: (fake_quantize_rows(args[0]), *args[1:]))
        self.timings[prefix] = time.perf_counter() - t0
        return stored

    def summary(self) -> str | None:
        if not self.timings:
            return None
        before = sum(b for b, _ in self.spread.values()) / max(len(self.spread), 1)
        after = sum(a for _, a in self.spread.values()) / max(len(self.spread), 1)
        return (f"smoothquant: {len(self.timings)} blocks in {sum(self.timings.values()):.1f} s; {len(self.spread)} "
                f"groups smoothed, activation channel max/median {before:.1f} -> {after:.1f} (mean over groups)")


def smooth_scale(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """``max|X_j|^alpha / max|W_j|^(1-alpha)``; 1 for channels whose inputs or weights are all zero."""
    x_max, w_max = x_max.float(), w_max.float().to(x_max.device)
    s = x_max.pow(alpha) / w_max.pow(1 - alpha)
    return torch.where((x_max > 0) & (w_max > 0) & torch.isfinite(s), s, torch.ones_like(s)).clamp(min=1e-5)


def _spread(channel_max: torch.Tensor) -> float:
    return float(channel_max.max() / channel_max.median().clamp(min=1e-12))


register_method(SmoothQuantConfig, SmoothQuantQuantizer)
