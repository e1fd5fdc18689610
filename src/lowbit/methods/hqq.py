"""Half-Quadratic Quantization (``hqq``): data-free integer weights whose zero-points are optimized.

The grid starts from each group's min/max, like RTN, with the zero-point rounded to an integer. Then, for
``iters`` rounds, the zero-point (and, with ``optimize_scale``, the scale too) is refitted to minimize an
l_p (p < 1) reconstruction error through a half-quadratic split, as the HQQ paper (Badri & Shaji, 2023)
and its library do: W_e = shrink_p(W - dequant(quant(W))); zero = mean(W_q - (W - W_e) * inv_scale).
Rounds stop early once the mean absolute error grows.

Stored as ``IntFormat(bits, group_size, symmetric=False, float_zero=True)``: codes packed as intgroup.py says,
fp16 scales and fp16 float zero-points, ``w = (q - z) * s``. 4-bit layers run on the CPU int4 kernel.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from torch import nn

from lowbit.config import IntGroupConfig
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat
from lowbit.quantizer import Quantizer
from lowbit.registry import register_method

MAX_INV_SCALE = 2e4  # as the HQQ library: caps 1/scale for groups of (almost) constant weights


@dataclasses.dataclass(frozen=True)
class HqqConfig(IntGroupConfig):
    """HQQ: min/max grid, then the zero-point (optionally the scale) fitted by half-quadratic optimization."""

    method = "hqq"
    version = 1
    per_channel = False

    group_size: int = 64
    iters: int = 20
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    optimize_scale: bool = False

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.iters <= 1000:
            raise ConfigError(f"hqq.iters={self.iters} is out of range; expected 0..1000 (the library uses 20)")
        if not 0 < self.lp_norm <= 1:
            raise ConfigError(f"hqq.lp_norm={self.lp_norm} is out of range; expected 0 < p <= 1 (the library uses 0.7)")
        if not (math.isfinite(self.beta) and math.isfinite(self.kappa) and self.beta > 0 and self.kappa >= 1):
            raise ConfigError(f"hqq.beta={self.beta}, kappa={self.kappa} are out of range; expected beta > 0 and "
                              "kappa >= 1 (the library uses 10 and 1.01)")


def _shrink(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The generalized soft-threshold: the proximal operator of |x|^p / beta."""
    if p == 1:
        return torch.sign(x) * torch.relu(x.abs() - 1.0 / beta)
    return torch.sign(x) * torch.relu(x.abs() - (1.0 / beta) * (x.abs() + 1e-8).pow(p - 1))


def hqq_quantize(w: torch.Tensor, fmt: IntFormat, cfg: HqqConfig) -> tuple[dict[str, torch.Tensor], int]:
    """``w`` [N, K] → the stored tensors of ``fmt`` and the number of optimization rounds run."""
    n, k = w.shape
    qmax = fmt.qtype.qmax
    wf = w.float().reshape(-1, fmt.group_size)
    lo, hi = wf.amin(1, keepdim=True), wf.amax(1, keepdim=True)
    inv = (qmax / (hi - lo)).clamp(max=MAX_INV_SCALE)  # 1/scale; inf (constant group) → the cap
    # Start from an integer zero-point, so that w = 0 sits on the grid. The HQQ library does this only at 4 bits;
    # at 3 bits an unrounded start leaves small weights up to half a step off zero (SmolLM2-135M, 3-bit g64,
    # 2,048 tokens: perplexity 198 unrounded, 68.8 rounded, RTN 71.7).
    zero = (-lo * inv).round()
    beta, best, rounds = cfg.beta, float("inf"), 0
    for _ in range(cfg.iters):
        wq = (wf * inv + zero).round_().clamp_(0, qmax)
        err = wf - (wq - zero) / inv
        current = float(err.abs().mean())
        target = wf - _shrink(err, beta, cfg.lp_norm)
        if cfg.optimize_scale:
            inv = _fit_inv_scale(wq, target, inv)
        zero = (wq - target * inv).mean(1, keepdim=True)
        beta *= cfg.kappa
        if current >= best:  # as the HQQ library: the round whose error grew still updates the zero-point
            break
        best, rounds = current, rounds + 1
    codes = (wf * inv + zero).round_().clamp_(0, qmax)
    scales, zeros = (1.0 / inv), zero
    flat = hi == lo  # constant groups: code 0 with z = -sign(c) and s = |c| give c back (0 → exact zero)
    if flat.any():
        codes.masked_fill_(flat, 0)
        scales = torch.where(flat, hi.abs().masked_fill(hi == 0, 1.0), scales)
        zeros = torch.where(flat, -torch.sign(hi), zeros)
    # the codes come from the fp32 1/scale, not the stored scales: the format packs them as they are
    return fmt.pack(codes.to(torch.uint8).reshape(n, k), scales.reshape(n, -1), zeros.reshape(n, -1)), rounds


def _fit_inv_scale(wq: torch.Tensor, target: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """1 / the least-squares scale per group of ``target ≈ (wq - z) * s`` (z is refitted next); groups
    without spread keep theirs."""
    qc = wq - wq.mean(1, keepdim=True)
    tc = target - target.mean(1, keepdim=True)
    var = qc.pow(2).sum(1, keepdim=True)
    s = (qc * tc).sum(1, keepdim=True) / var.clamp(min=1e-12)
    ok = (var > 0) & (s > 1.0 / MAX_INV_SCALE)
    return torch.where(ok, 1.0 / s, inv)


class HqqQuantizer(Quantizer):
    config_cls = HqqConfig

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.timings: dict[str, tuple[float, int]] = {}  # layer → (seconds, optimization rounds)

    def weight_format(self, name: str, module: nn.Linear) -> IntFormat:
        group = self.group_size_for(name, module.in_features, self.config.group_size)
        return IntFormat(bits=self.config.bits, group_size=group, symmetric=False, float_zero=True)

    def quantize(self, name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        out, rounds = hqq_quantize(weight, self.formats[name], self.config)
        self.timings[name] = (time.perf_counter() - start, rounds)
        return out

    def summary(self) -> str | None:
        if not self.timings:
            return None
        seconds = [t for t, _ in self.timings.values()]
        slowest = max(self.timings, key=lambda n: self.timings[n][0])
        return (f"hqq: {len(seconds)} layers in {sum(seconds):.1f} s ({1000 * sum(seconds) / len(seconds):.0f} ms per "
                f"layer; slowest {slowest} {1000 * self.timings[slowest][0]:.0f} ms)")


register_method(HqqConfig, HqqQuantizer)
