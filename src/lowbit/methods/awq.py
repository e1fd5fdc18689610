"""AWQ (Lin et al., 2023): activation-aware scales that protect the weights of salient input channels.

Calibrated block by block (``lowbit quantize SRC OUT --method awq --calib TEXT``). In each block, for every
group of Linears that read one module's output (``Balance`` data in ``lowbit/archs.py``: q/k/v after the input
norm, gate/up after the MLP norm, down after up, o after v when their widths match):

1. ``x̄`` = per-input-channel mean |x| of the group's input over the calibration tokens;
2. for α in 0, 1/grid, ..., (grid-1)/grid: ``s = x̄^α`` (with ``duo_scaling``, ``x̄^α / w̄^(1-α)``, w̄ the mean of
   |W| relative to its group's max), normalized by sqrt(max(s) · min(s)); the Linears compute with
   ``RTN(W · diag(s)) / s`` and the ``inspect`` module (attention, MLP; else the Linears) runs on its captured
   inputs (the first ``search_tokens`` tokens); the α whose output is closest (MSE) to full precision wins. α = 0 is plain RTN, so the search never
   does worse than RTN on that measure;
3. fold: the previous module's output is divided by s (a norm's weight, honoring Gemma's ``1 + w``, or a
   Linear's rows and bias) and the Linears' columns are multiplied by it; the block's function is unchanged.

Then, with ``clip``, each Linear's weight groups are clipped to ``r · max|w|`` with the ratio r (1 down to
``1 - clip_max_shrink``) that minimizes each group's share of the output error on ``clip_tokens`` input rows
(Linears matching ``clip_skip``, the attention's query and key, are not clipped: their errors meet in the
attention scores). Finally every Linear is rounded to nearest, including those no group covers, and stored as
``IntFormat`` (integer zero-points, the AutoAWQ / GPTQ layout), so AWQ models run on the same kernels as rtn.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from lowbit.archs import name_matches
from lowbit.calibration.balance import (
    Group,
    balance_groups,
    channel_stat,
    fold,
    group_inputs,
    group_outputs,
    require_balance,
)
from lowbit.calibration.inputs import BlockInputs, Reference
from lowbit.calibration.method import CalibratedQuantizer, Stored, use_dequantized
from lowbit.config import IntGridConfig
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat
from lowbit.registry import register_method


@dataclasses.dataclass(frozen=True)
class AwqConfig(IntGridConfig):
    """AWQ: activation-aware per-channel scales, optional clipping search, then integer RTN (needs calibration)."""

    method = "awq"
    version = 1

    grid: int = 20  # α values tried: 0, 1/grid, ..., (grid-1)/grid
    search_tokens: int = 4096  # calibration tokens (whole batches) whose outputs judge each α; x̄ uses all
    duo_scaling: bool = False  # s = x̄^α / w̄^(1-α) instead of x̄^α
    clip: bool = True
    clip_grid: int = 20  # clipping ratios 1 - i/clip_grid ...
    clip_max_shrink: float = 0.5  # ... down to 1 - clip_max_shrink
    clip_tokens: int = 512  # input rows the clipping search measures on
    clip_skip: tuple[str, ...] = ("q_proj", "k_proj", "qkv_proj", "query", "key")

    def validate(self) -> None:
        super().validate()
        for name, value, top in (("grid", self.grid, 1000), ("clip_grid", self.clip_grid, 1000),
                                 ("clip_tokens", self.clip_tokens, 1 << 20), ("search_tokens", self.search_tokens, 1 << 24)):
            if not 1 <= value <= top:
                raise ConfigError(f"awq.{name}={value} is out of range; expected 1..{top} (default "
                                  f"{getattr(AwqConfig, name)})")
        if not 0 <= self.clip_max_shrink < 1:
            raise ConfigError(f"awq.clip_max_shrink={self.clip_max_shrink} is out of range; expected 0 <= value < 1 "
                              "(default 0.5)")


class AwqQuantizer(CalibratedQuantizer):
    config_cls = AwqConfig

    def __init__(self, config: AwqConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.timings: dict[str, float] = {}  # block → seconds
        self.alphas: dict[str, tuple[float, float]] = {}  # group (prev module) → (α, output MSE relative to α = 0)

    def weight_format(self, name: str, module: nn.Linear) -> IntFormat:
        group = self.group_size_for(name, module.in_features, self.config.group_size)
        return IntFormat(bits=self.config.bits, group_size=group, symmetric=self.config.symmetric)

    def preprocess_model(self, model: nn.Module) -> None:
        super().preprocess_model(model)
        if not self.pre_quantized:  # before any calibration work: an unsupported architecture fails here
            require_balance(self.model_type, self.config.method)

    def calibrate_block(self, block: nn.Module, prefix: str, inputs: BlockInputs,
                        reference: Reference | None = None) -> Stored:
        t0 = time.perf_counter()
        linears = self.block_linears(block, prefix)
        self.alphas.update(balance_block(block, prefix, inputs, linears, self.formats, self.model_type, self.config))
        samples = self._clip_inputs(block, inputs, linears) if self.config.clip else {}
        stored: Stored = {}
        for name, linear in linears.items():
            fmt = self.formats[name]
            w = linear.weight.detach().float()
            if name in samples:
                w = clip_search(w, samples.pop(name), fmt, self.config.clip_grid, self.config.clip_max_shrink)
            stored[name] = {k: v.cpu() for k, v in fmt.encode(w).items()}
            use_dequantized(linear, fmt, stored[name])
        self.timings[prefix] = time.perf_counter() - t0
        return stored

    def _clip_inputs(self, block: nn.Module, inputs: BlockInputs, linears: dict[str, nn.Linear]
                     ) -> dict[str, torch.Tensor]:
        """About ``clip_tokens`` input rows of each Linear to clip, evenly spread over the batches."""
        chosen = {n: m for n, m in linears.items() if not any(name_matches(n, p) for p in self.config.clip_skip)}
        stride = max(1, inputs.tokens // self.config.clip_tokens)
        rows: dict[str, list[torch.Tensor]] = {n: [] for n in chosen}
        inputs.feed(block, chosen, lambda n, x: rows[n].append(x.reshape(-1, x.shape[-1])[::stride].float().clone()))
        return {n: torch.cat(r)[: self.config.clip_tokens] for n, r in rows.items() if r}

    def summary(self) -> str | None:
        if not self.timings:
            return None
        total = sum(self.timings.values())
        alphas = [a for a, _ in self.alphas.values()]
        gain = sum(r for _, r in self.alphas.values()) / max(len(self.alphas), 1)
        return (f"awq: {len(self.timings)} blocks in {total:.1f} s; {len(alphas)} groups scaled, mean α "
                f"{sum(alphas) / max(len(alphas), 1):.2f}, output error {gain:.2f}x that of plain RTN")


def balance_block(block: nn.Module, prefix: str, inputs: BlockInputs, linears: dict[str, nn.Linear], formats: dict,
                  model_type: str | None, cfg) -> dict[str, tuple[float, float]]:
    """Steps 1-3 of the module doc on every balance group of the block: each group's scale searched (RTN in
    ``formats`` judges it; ``cfg`` gives ``grid``, ``search_tokens``, ``duo_scaling``, ``method``) and folded.
    Returns, per group (its prev module), the α chosen and its output MSE relative to α = 0. GPTQ calls it too
    (``awq_balance``)."""
    alphas = {}
    for group in balance_groups(block, prefix, model_type, linears, cfg.method):
        s, alphas[group.prev_name] = search_scale(block, inputs, group, linears, formats, cfg)
        fold(group, s)
    return alphas


@torch.no_grad()
def search_scale(block: nn.Module, inputs: BlockInputs, group: Group, quantized: dict[str, nn.Linear], formats: dict,
                 cfg) -> tuple[torch.Tensor, tuple[float, float]]:
    """The scale s of ``group`` whose quantized output is closest to full precision (see the module doc), and
    (α, its output MSE relative to α = 0)."""
    xs, calls = group_inputs(block, inputs, group)
    x_mean = channel_stat(xs, "mean")
    w_mean = _weight_mean(group, formats) if cfg.duo_scaling else None
    xs, calls = _first_tokens(xs, calls, cfg.search_tokens)
    ref = group_outputs(group, xs, calls)
    originals = {n: m.weight.data.clone() for n, m in group.linears.items()}
    losses, best = [], None
    try:
        for i in range(cfg.grid):
            s = awq_scale(x_mean, w_mean, i / cfg.grid)
            for name, linear in group.linears.items():
                if name in quantized:
                    linear.weight.data.copy_(fake_quantize(originals[name].float() * s, formats[name]) / s)
            losses.append(_mse(group_outputs(group, xs, calls), ref))
            if best is None or losses[-1] < losses[best[0]]:
                best = (i, s)
    finally:
        for name, linear in group.linears.items():
            linear.weight.data.copy_(originals[name])
    return best[1], (best[0] / cfg.grid, losses[best[0]] / max(losses[0], 1e-30))


def awq_scale(x_mean: torch.Tensor, w_mean: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """``x̄^α`` (or ``x̄^α / w̄^(1-α)``), kept from 0, normalized so that max(s) · min(s) = 1."""
    s = x_mean.pow(alpha) if w_mean is None else x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)
    s = s.clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def _weight_mean(group: Group, formats: dict) -> torch.Tensor:
    """Per input channel: the mean over the group's rows of |w| / max|w| of its quantization group."""
    parts = []
    for name, linear in group.linears.items():
        w = linear.weight.detach().float().abs()
        gs = getattr(formats.get(name), "group_size", None) or w.shape[1]
        g = w.reshape(w.shape[0], -1, gs)
        parts.append((g / (g.amax(-1, keepdim=True) + 1e-6)).reshape(w.shape))
    return torch.cat(parts).mean(0)


def fake_quantize(w: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """What ``w`` becomes once stored in ``fmt`` (round to nearest), in float32."""
    return fmt.decode(fmt.encode(w), torch.float32)


def _first_tokens(xs: list[torch.Tensor], calls: list | None, tokens: int) -> tuple[list[torch.Tensor], list | None]:
    """The first batches holding at least ``tokens`` tokens (all of them if there are fewer)."""
    seen, count = 0, 0
    while count < len(xs) and seen < tokens:
        seen += xs[count].reshape(-1, xs[count].shape[-1]).shape[0]
        count += 1
    return xs[:count], None if calls is None else calls[:count]


def _mse(out: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    total = sum(float((o.float() - r.float()).pow(2).sum()) for o, r in zip(out, ref, strict=True))
    return total / sum(r.numel() for r in ref)


@torch.no_grad()
def clip_search(w: torch.Tensor, x: torch.Tensor, fmt: IntFormat, grid: int = 20, max_shrink: float = 0.5,
                rows: int = 256) -> torch.Tensor:
    """``w`` [N, K] with each quantization group clipped to ±r·max|w|, r chosen per group among 1, 1 - 1/grid, ...
    (down to 1 - max_shrink) to minimize the squared error of the group's part of the output on inputs ``x``."""
    n, k = w.shape
    gs = fmt.group_size or k
    xg = x.float().reshape(x.shape[0], k // gs, gs)
    out = torch.empty_like(w, dtype=torch.float32)
    steps = max(1, int(max_shrink * grid + 1e-9))
    for r0 in range(0, n, rows):
        wg = w[r0:r0 + rows].float().reshape(-1, k // gs, gs)
        ref = torch.einsum("ngk,tgk->ntg", wg, xg)
        top = wg.abs().amax(-1, keepdim=True)
        best_top, best_err = top.clone(), torch.full(top.shape[:2], float("inf"), device=w.device)
        for i in range(steps):
            m = top * (1 - i / grid)
            q = fake_quantize(torch.maximum(torch.minimum(wg, m), -m).reshape(-1, k), fmt).reshape(wg.shape)
            err = (torch.einsum("ngk,tgk->ntg", q, xg) - ref).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_top = torch.where(better[..., None], m, best_top)
        out[r0:r0 + rows] = torch.maximum(torch.minimum(wg, best_top), -best_top).reshape(-1, k)
    return out


register_method(AwqConfig, AwqQuantizer)
