"""GPTQ (Frantar et al., 2022): integer weights whose rounding errors are compensated, column by column, by
the columns not yet quantized, weighted by the inverse Hessian ``H = X^T X / n`` of the layer's inputs.

Per layer: dampen H by ``damp`` × its mean diagonal, invert it by Cholesky (fp64 if fp32 fails), then walk
the columns in blocks of ``block_size`` with lazy batch updates. ``act_order`` walks them by decreasing
``diag(H)``; its groups are then stored with a ``g_idx``, unless ``static_groups`` fixes every group's grid
from the original column groups first, which keeps groups of consecutive inputs for the fast kernels.
Each group's grid is min/max (or absmax) of its current, error-updated columns, as RTN would choose it.

With ``awq_balance``, each block first gets AWQ's per-channel scales (``methods.awq.balance_block``: the scale
search judged by RTN, folded into the norm or Linear before each balance group), then GPTQ quantizes the
scaled weights; AWQ's clipping is left out (GPTQ's grid, or ``mse``, chooses the ranges).

With ``fp_targets`` (the asymmetric calibration of GPTAQ, Li et al., 2025), each Linear is fitted to what the
full-precision model computes, ``W X_fp``, instead of to its own weight on the quantized model's inputs ``X``: the
runner carries the full-precision blocks' outputs beside the quantized ones, and GPTQ quantizes the least-squares
target ``W* = W + W D (H + λI)^-1`` (:func:`fp_target`), so later layers correct the error of earlier ones.

Calibrated block by block (``lowbit quantize --calib``): within a block, with ``true_sequential``, Linears
that share an input (q/k/v; gate/up) are quantized together, and later ones see the earlier ones quantized.
Stored as ``IntFormat``: the same layout as ``rtn``, so GPTQ models run on the same kernels.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from lowbit.calibration.balance import require_balance
from lowbit.calibration.inputs import BlockInputs, Reference, call_stages, check_used
from lowbit.calibration.method import CalibratedQuantizer, Stored, use_dequantized
from lowbit.config import IntGridConfig, saved_when_set
from lowbit.errors import CalibrationError, ConfigError
from lowbit.formats import IntFormat
from lowbit.methods._gptq_linalg import inverse_factor_, permute_
from lowbit.methods.awq import AwqConfig, balance_block
from lowbit.registry import register_method


@dataclasses.dataclass(frozen=True)
class GptqConfig(IntGridConfig):
    """GPTQ: integer weights with Hessian-weighted error compensation (needs calibration text)."""

    method = "gptq"
    version = 1

    act_order: bool = False  # quantize columns by decreasing Hessian diagonal (desc_act)
    static_groups: bool = False  # with act_order: groups fixed up front, stored without g_idx
    damp: float = 0.01  # added to H's diagonal, as a fraction of its mean
    block_size: int = 128  # columns per lazy batch update (the saved name; ``lazy_batch`` in gptq())
    true_sequential: bool = True
    mse: bool = False  # each group's grid: the range shrink (down to 0.8) with the least |error|^2.4, not min/max
    awq_balance: bool = saved_when_set(False)  # AWQ's scale search and fold on the balance groups first (no clip)
    fp_targets: bool = saved_when_set(False)  # match the full-precision model's outputs, not the layer's own (below)
    fp_alpha: float = saved_when_set(1.0)  # with fp_targets: the share of the correction toward them applied

    def validate(self) -> None:
        super().validate()
        if not 0 < self.damp <= 1:
            raise ConfigError(f"gptq.damp={self.damp} is out of range; expected 0 < damp <= 1 (usually 0.01)")
        if self.fp_targets and self.awq_balance:
            raise ConfigError("gptq.fp_targets=True with awq_balance=True: AWQ's scales change each Linear's inputs, "
                              "so they no longer meet the full-precision model's; expected one of the two")
        if not 0 < self.fp_alpha <= 1:
            raise ConfigError(f"gptq.fp_alpha={self.fp_alpha} is out of range; expected 0 < fp_alpha <= 1 (the share "
                              "of fp_targets' correction applied; 1 is the full least-squares fit)")
        if not 1 <= self.block_size <= 4096:
            raise ConfigError(f"gptq.block_size={self.block_size} is out of range; expected 1..4096 (usually 128)")


class GptqQuantizer(CalibratedQuantizer):
    config_cls = GptqConfig

    def __init__(self, config: GptqConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.timings: dict[str, float] = {}
        self.alphas: dict[str, tuple[float, float]] = {}  # with awq_balance: group → (α, output MSE vs α = 0)

    def preprocess_model(self, model: nn.Module) -> None:
        super().preprocess_model(model)
        if self.config.awq_balance and not self.pre_quantized:  # an unsupported architecture fails before any work
            require_balance(self.model_type, "gptq with awq_balance")

    def weight_format(self, name: str, module: nn.Linear) -> IntFormat:
        cfg = self.config
        group = self.group_size_for(name, module.in_features, cfg.group_size)
        g_idx = cfg.act_order and not cfg.static_groups and group is not None
        return IntFormat(bits=cfg.bits, group_size=group, symmetric=cfg.symmetric, g_idx=g_idx)

    @property
    def wants_reference(self) -> bool:
        return self.config.fp_targets

    def calibrate_block(self, block: nn.Module, prefix: str, inputs: BlockInputs,
                        reference: Reference | None = None) -> Stored:
        linears = self.block_linears(block, prefix)
        if self.config.awq_balance:
            cfg = self.config
            rtn = {n: dataclasses.replace(f, g_idx=False) for n, f in self.formats.items() if n in linears}
            awq = AwqConfig(bits=cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric)
            self.alphas.update(balance_block(block, prefix, inputs, linears, rtn, self.model_type, awq))
        stages = call_stages(block, linears, inputs) if self.config.true_sequential else [list(linears)]
        stored: Stored = {}
        for stage in stages:  # later stages see the earlier ones quantized
            stored.update(self.calibrate_stage(block, prefix, inputs, {n: linears[n] for n in stage}, reference))
        return stored

    def calibrate_stage(self, block: nn.Module, prefix: str, inputs: BlockInputs, linears: dict[str, nn.Linear],
                        reference: Reference | None = None) -> Stored:
        """GPTQ of ``linears`` (of the block, as it computes now) from one pass over the batches; each then computes
        with its quantized weight. ``lowbit fit``'s ``mixed`` calls it stage by stage in the block's call order."""
        hessians, deltas = _hessians(block, linears, inputs, reference if self.config.fp_targets else None, prefix)
        stored: Stored = {}
        for name in linears:
            t0 = time.perf_counter()
            h = hessians.pop(name)
            w = linears[name].weight
            if name in deltas:
                w = fp_target(w, h, deltas.pop(name), self.config.damp, self.config.fp_alpha)
            if any(other is h for other in hessians.values()):
                h = h.clone()  # shared with a Linear still to come (q/k/v; gate/up), and GPTQ works in place
            stored[name] = self.quantize_layer(name, w, h)
            use_dequantized(linears[name], self.formats[name], stored[name])
            self.timings[name] = time.perf_counter() - t0
        return stored

    def quantize_layer(self, name: str, weight: torch.Tensor, hessian: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        return gptq(weight, hessian, self.formats[name], act_order=cfg.act_order, static_groups=cfg.static_groups,
                    damp=cfg.damp, lazy_batch=cfg.block_size, mse=cfg.mse, name=name, inplace=True)

    def summary(self) -> str | None:
        if not self.timings:
            return None
        total = sum(self.timings.values())
        awq = f"; awq_balance: {len(self.alphas)} groups scaled, mean α " \
              f"{sum(a for a, _ in self.alphas.values()) / len(self.alphas):.2f}" if self.alphas else ""
        per_layer = 1000 * total / len(self.timings)
        return f"gptq: {len(self.timings)} layers in {total:.1f} s ({per_layer:.0f} ms per layer){awq}"


def _hessians(block: nn.Module, linears: dict[str, nn.Linear], inputs: BlockInputs, reference: Reference | None = None,
              prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """H = X^T X / n of each Linear from one pass over the batches, and with ``reference`` D = (X_fp - X)^T X / n,
    X_fp its input in the full-precision model (same batch, same positions); Linears fed the same tensor share
    one H and one D."""
    sums: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(linears, 0)
    shared: dict[str, str] = {}  # Linear → the one before it that was fed the same tensor
    last: list = [None, None]  # the previous call's input and the Linear whose H it went into (kept: ids stay unique)
    fp_inputs: dict[str, torch.Tensor] = {}  # this batch's inputs in the full-precision model

    def add(name: str, x: torch.Tensor) -> None:
        counts[name] += x.numel() // x.shape[-1]
        if last[0] is x:
            shared[name] = last[1]
            return
        x2 = x.reshape(-1, x.shape[-1]).float()
        if name not in sums:
            sums[name] = torch.zeros(x2.shape[1], x2.shape[1], device=x2.device)
        sums[name].addmm_(x2.T, x2)
        if reference is not None:
            if name not in deltas:
                deltas[name] = torch.zeros_like(sums[name])
            deltas[name].addmm_((fp_inputs[name].reshape(x2.shape).float() - x2).T, x2)
        last[0], last[1] = x, name

    if reference is None:
        inputs.feed(block, linears, add)
    else:  # batch by batch: the full-precision block's inputs of a batch, then the block's own
        fp_linears = reference.modules(linears, prefix)
        for j in range(len(inputs.batches)):
            fp_inputs.clear()
            reference.inputs.feed(reference.block, fp_linears, fp_inputs.setdefault, only=j)
            inputs.feed(block, linears, add, only=j)
        fp_inputs.clear()
    last.clear()
    check_used(linears, {n for n, c in counts.items() if c})
    for name in linears:
        for table in (sums, deltas):
            if name in table:
                table[name].div_(counts[name])
    for name, first in shared.items():
        sums[name] = sums[first]
        if first in deltas:
            deltas[name] = deltas[first]
    return sums, deltas


def fp_target(weight: torch.Tensor, hessian: torch.Tensor, delta: torch.Tensor, damp: float,
              alpha: float = 1.0) -> torch.Tensor:
    """The weight W* = W + W D (H + λI)^-1 whose outputs on the quantized model's inputs X best match the
    full-precision model's W X_fp in least squares (D = (X_fp - X)^T X / n, H = X^T X / n, λ = ``damp`` × mean
    diag H). ``|X_fp W^T - X Q^T|^2 = |X_fp W^T - X W*^T|^2 + |X (W* - Q)^T|^2`` for any Q (the first residual is
    orthogonal to X's columns), so GPTQ of W* on H minimizes the error against the full-precision outputs. ``alpha``
    < 1 moves only that share of the way from W to W* (GPTAQ's reference code applies 0.25)."""
    w = weight.detach().float()
    hd = hessian.to(w.device, torch.float32).clone()
    dead = hd.diagonal() == 0
    hd[dead, dead] = 1
    hd.diagonal().add_(damp * hd.diagonal().mean())
    factor, info = torch.linalg.cholesky_ex(hd, out=(hd, torch.empty((), dtype=torch.int32)))
    if info.item() != 0:
        raise CalibrationError(f"the Hessian of a layer's inputs is not positive definite with damp={damp}; raise "
                               "damp (e.g. --opt damp=0.1) or give more calibration samples")
    return w + alpha * torch.cholesky_solve((w @ delta.to(w.device, torch.float32)).T, factor).T


def _inverse_factor(h: torch.Tensor, damp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of the dampened H's inverse, computed in H's own storage (``_gptq_linalg``); in
    fp64 (one K x K fp64 copy) if fp32 fails; an error if that fails too."""
    h.diagonal().add_(damp * h.diagonal().mean())
    if inverse_factor_(h):
        return h
    h64 = h.double()
    if inverse_factor_(h64):
        return h.copy_(h64)
    raise CalibrationError(f"{name}: the Hessian of its inputs is not positive definite even with damp={damp} (fp64); "
                           "raise damp (e.g. --opt damp=0.1) or give more calibration samples")


MSE_SHRINKS = torch.linspace(1.0, 0.8, 21).tolist()


def grid_params(w: torch.Tensor, fmt: IntFormat, mse: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The grid of one group ``w`` [N, g]: min/max (as RTN), or with ``mse`` the shrunk range, per row, whose
    rounding error has the smallest sum of |error|^2.4 (the GPTQ reference's search)."""
    if not mse:
        return fmt.grid(w)
    w = w.float()
    best, best_err = None, None
    for shrink in MSE_SHRINKS:
        s, z = fmt.grid(w * shrink)
        sf = s.float()
        q = fmt.round_codes(w / sf, None if z is None else z.float())
        deq = (q if z is None else q.sub(z.float())).mul(sf)
        err = (deq - w).abs().pow(2.4).sum(1)
        if best is None:
            best, best_err = [s.clone(), None if z is None else z.clone()], err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best[0][better] = s[better]
        if z is not None:
            best[1][better] = z[better]
    return best[0], best[1]


def gptq(weight: torch.Tensor, hessian: torch.Tensor, fmt: IntFormat, *, act_order: bool = False,
         static_groups: bool = False, damp: float = 0.01, lazy_batch: int = 128, mse: bool = False,
         name: str = "weight", inplace: bool = False) -> dict[str, torch.Tensor]:
    """GPTQ of ``weight`` [N, K] given its inputs' ``hessian`` [K, K] → the stored tensors of ``fmt``.

    Columns are walked in lazy batches of ``lazy_batch`` (the config's ``block_size``); each column is rounded by
    the format's rule (:meth:`IntFormat.round_codes`) and the result packed by :meth:`IntFormat.pack`.
    ``inplace`` lets it work in ``hessian`` itself (then garbage), saving a K x K copy."""
    w = weight.detach().float().clone()
    n, k = w.shape
    h = hessian.to(w.device, torch.float32)
    if h is hessian and not inplace:
        h = h.clone()
    dead = h.diagonal() == 0  # inputs that are always zero: their columns do not matter
    h[dead, dead] = 1
    w[:, dead] = 0
    gs = fmt.group_size or k
    fixed = [grid_params(w[:, c:c + gs], fmt, mse) for c in range(0, k, gs)] \
        if static_groups or fmt.group_size is None else None
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else None
    if perm is not None:
        w = w[:, perm]
        permute_(h, perm)
    hinv = _inverse_factor(h, damp, name)
    del h
    wt = w.T.contiguous()  # [K, N]: a column of W is a contiguous row here, and updates are in-place rank-1 adds
    del w
    codes = torch.empty(k, n, dtype=torch.int8 if fmt.symmetric else torch.uint8, device=wt.device)
    scales, zeros = [], []
    for i1 in range(0, k, lazy_batch):
        i2 = min(i1 + lazy_batch, k)
        w1, err1, hinv1 = wt[i1:i2].clone(), torch.empty(i2 - i1, n, device=wt.device), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if fixed is not None:
                if perm is not None or col % gs == 0:
                    s, z = fixed[(int(perm[col]) if perm is not None else col) // gs]
                    sf, zf = s.float()[:, 0], None if z is None else z.float()[:, 0]
            elif col % gs == 0:  # a new group: its grid from the current (error-updated) columns
                s, z = grid_params(torch.cat([w1[i:i + gs], wt[i2:col + gs]]).T, fmt, mse)
                scales.append(s)
                zeros.append(z)
                sf, zf = s.float()[:, 0], None if z is None else z.float()[:, 0]
            x = w1[i]
            q = fmt.round_codes(x.div(sf), zf)
            codes[col] = q.to(codes.dtype)
            deq = q.sub_(zf).mul_(sf) if zf is not None else q.mul_(sf)
            e = x.sub(deq).div_(hinv1[i, i])
            w1[i:].addr_(hinv1[i, i:], e, alpha=-1)
            err1[i] = e
        wt[i2:].addmm_(hinv[i1:i2, i2:].T, err1, alpha=-1)
    codes = codes.T
    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    if fixed is not None:
        scales, zeros = [s for s, _ in fixed], [z for _, z in fixed]
    g_idx = (torch.arange(k, device=wt.device) // gs)[torch.argsort(perm)] if fmt.g_idx else None
    out = fmt.pack(codes, torch.cat(scales, 1).contiguous(),
                   None if fmt.symmetric else torch.cat(zeros, 1).contiguous(), g_idx)
    return {name: t.cpu() for name, t in out.items()}


register_method(GptqConfig, GptqQuantizer)
