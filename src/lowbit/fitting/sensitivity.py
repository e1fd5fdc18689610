"""How much each layer suffers from each candidate: the numbers ``lowbit fit`` adds up and minimizes.

Four estimators, all on calibration windows, all with every other layer at full precision:

- ``fisher``: the loss increase predicted from the squared gradients of the loss (the diagonal empirical Fisher
  information ``F``, one backward pass per window): ``1/2 * sum(F * (Wq - W)^2)``. It weighs each weight's error by
  how much the loss reacts to that weight, so layers are compared in one currency, for the cost of a few backward
  passes.

- ``output-fisher``: the same second-order estimate taken at the layer's output instead of its weights:
  ``1/2 * sum over tokens t, outputs j of g[t, j]^2 * (x[t] @ (Wq - W).T)[j]^2``, with ``g`` the gradient of the
  loss at the layer's output and ``x`` its input, on every window's first position (the attention sink) and a
  seeded pick of the others, weighted to estimate the mean per-window loss increase. The output error sees how the
  layer's inputs correlate, which the weight diagonal does not: a GPTQ layer moves its weights further than
  rounding does but cancels much of that in its output, so the weight diagonal overrates its damage.
- ``output``: the layer's squared relative output error ``||X (Wq - W)^T||^2 / ||X W^T||^2`` on a seeded pick of its
  input rows (``eval.report.capture_inputs``). Seconds for a whole model, but blind to how much the rest of the
  network amplifies or absorbs a layer's error.
- ``loss``: the increase of the model's next-token loss (nats per token) when only that layer is quantized. One
  forward pass per layer and candidate, so minutes, but it measures the quantity perplexity is made of.

A calibrated candidate (GPTQ) quantizes the layer through its quantizer's ``quantize_layer`` with the Hessian
``X^T X / rows`` of the layer's inputs over ``hessian_ids``: the calibration windows the quantization itself will
use (``fit``'s ``calib_samples``). Not with the few rows its error is scored on: GPTQ fitted to 1,024 rows of a
layer with more inputs than that cancels its error on exactly those rows, and the estimate then rated GPTQ far
too good on wide layers. Data-free candidates quantize through their own ``quantize``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch
from torch import nn

from lowbit.config import QuantConfig
from lowbit.errors import ConfigError
from lowbit.eval.report import capture_inputs, seeded_rows
from lowbit.fitting.candidates import Layout
from lowbit.registry import get

ESTIMATORS = ("fisher", "output-fisher", "output", "loss")
LOSS_POSITIONS = 128  # scored positions per window for the loss estimator (the head runs on these only)


def default_estimator(candidates: dict[str, QuantConfig]) -> str:
    """``auto``: ``output-fisher`` when a candidate is calibrated (GPTQ moves weights far but cancels much of it in
    its output, which the weight diagonal cannot see; its plans scored better at all 4 budgets measured), else
    ``fisher`` (better than ``output`` at all 7 budgets measured with data-free candidates)."""
    return "output-fisher" if any_calibrated(candidates) else "fisher"


def any_calibrated(candidates: dict[str, QuantConfig]) -> bool:
    """Whether a candidate needs calibration data (GPTQ)."""
    return any(get(cfg.method).quantizer_cls.requires_calibration for cfg in candidates.values())


def _quantizers(candidates: dict[str, QuantConfig], lay: Layout) -> dict[str, object]:
    out = {}
    for label, cfg in candidates.items():
        sub = get(cfg.method).quantizer_cls(cfg, calibrated=True)
        sub.formats.update(lay.formats[label])
        out[label] = sub
    return out


def quantized_weight(sub, name: str, w: torch.Tensor, x: torch.Tensor | None,
                     hessian: torch.Tensor | None = None) -> torch.Tensor:
    """Layer ``name``'s weight as candidate quantizer ``sub`` stores it, decoded to fp32; a calibrated one with
    ``hessian`` (else the Hessian of the rows ``x``)."""
    if getattr(sub, "requires_calibration", False):
        if hessian is None and x is None:
            raise ConfigError(f"no calibration rows reached {name}; expected the forward pass to use every layer")
        hessian = x.T @ x / x.shape[0] if hessian is None else hessian.clone()  # GPTQ factors it in place
        stored = sub.quantize_layer(name, w.clone(), hessian)
    else:
        stored = sub.quantize(name, w)
    return sub.formats[name].decode(stored, torch.float32)


def _scored(ids: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is scored: evenly spread, at most LOSS_POSITIONS per window."""
    t = ids.shape[1] - 1
    return torch.linspace(0, t - 1, min(LOSS_POSITIONS, t)).round().long().unique()


def mean_loss(model: nn.Module, ids: torch.Tensor, positions: torch.Tensor) -> float:
    """Mean next-token cross entropy at ``positions`` of every window (the head runs on those only)."""
    with torch.inference_mode():
        logits = model(input_ids=ids, logits_to_keep=positions).logits.float()
        target = ids[:, positions + 1]
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1)))


class _Replay(nn.Module):
    """Stands in for a block before the one being probed: hands on the fp32 hidden states recorded there."""

    def __init__(self, out: torch.Tensor | None) -> None:
        super().__init__()
        self.out = out

    def forward(self, hidden, *args, **kwargs):
        return hidden if self.out is None else self.out


class _TailLoss:
    """The loss with one layer changed, recomputed from that layer's block on: the fp32 outputs of the blocks
    before it are recorded once and replayed (the embeddings still run; they are cheap)."""

    def __init__(self, model: nn.Module, ids: torch.Tensor) -> None:
        from lowbit.archs import find_blocks

        self.model, self.ids, self.positions = model, ids, _scored(ids)
        self.prefix, self.blocks = find_blocks(model)
        outs: list[torch.Tensor] = []
        hooks = [b.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, (tuple, list)) else o))
                 for b in self.blocks]
        try:
            self.base = mean_loss(model, ids, self.positions)
        finally:
            for h in hooks:
                h.remove()
        self.outs = outs

    def block_of(self, name: str) -> int:
        rest = name[len(self.prefix) + 1:] if name.startswith(self.prefix + ".") else ""
        head = rest.split(".", 1)[0]
        return int(head) if head.isdigit() else 0  # outside the blocks: run everything

    def __call__(self, name: str) -> float:
        b = self.block_of(name)
        originals = [self.blocks[i] for i in range(b)]
        for i in range(b):
            self.blocks[i] = _Replay(self.outs[b - 1] if i == b - 1 else None)
        try:
            return mean_loss(self.model, self.ids, self.positions) - self.base
        finally:
            for i, block in enumerate(originals):
                self.blocks[i] = block


@contextlib.contextmanager
def _gradients_of(model: nn.Module, names: tuple[str, ...]):
    """Only the named Linears' weights ask for gradients inside the block; every flag is restored after it."""
    modules = dict(model.named_modules())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        modules[n].weight.requires_grad_(True)
    try:
        yield modules
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


def input_hessians(model: nn.Module, ids: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """name → ``X^T X / rows`` of each named Linear's inputs over every token of the windows ``ids`` (what GPTQ
    quantizes a layer with), from one forward pass per window."""
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    rows = dict.fromkeys(names, 0)

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            if name not in sums:
                sums[name] = torch.zeros(x.shape[1], x.shape[1])
            sums[name].addmm_(x.T, x)
            rows[name] += x.shape[0]
        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():  # not inference_mode: the sums are divided after it
            for window in ids:
                model(input_ids=window[None])
    finally:
        for h in handles:
            h.remove()
    return {n: h.div_(rows[n]) for n, h in sums.items()}


def fisher_diagonal(model: nn.Module, ids: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Mean over the windows of each named Linear's squared weight gradient of the next-token loss."""
    with _gradients_of(model, names) as modules:
        weights = {n: modules[n].weight for n in names}
        out = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
        for window in ids:
            loss = model(input_ids=window[None], labels=window[None]).loss
            grads = torch.autograd.grad(loss, list(weights.values()))
            for n, g in zip(weights, grads):
                out[n].add_(g.float().pow(2))
    return {n: f.div_(len(ids)) for n, f in out.items()}


def window_rows(windows: int, width: int, max_rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, weights): every window's first position, then a seeded pick of the other positions up to
    ``max_rows`` in all. A weighted sum over these rows estimates the mean over the windows of a sum over every
    position. The first position is the attention sink: every later query attends to it, so a layer's error there
    (a value projection's above all) can outweigh hundreds of other rows, and a plain random pick holds it or not
    by chance (1,024 rows of 16 windows of 512 held none, and the plan it gave put v_proj at 3 bits)."""
    total = windows * width
    first = torch.arange(windows) * width
    rest_total = total - windows
    rest = max(0, min(max_rows - windows, rest_total))
    others = seeded_rows(rest_total, rest, seed)
    others = others + others // (width - 1) + 1 if width > 1 else others  # skip each window's first position
    keep = torch.cat([first, others]).sort().values
    weights = torch.where(keep % width == 0, 1.0, rest_total / max(rest, 1)) / windows
    return keep, weights


def output_gradients(model: nn.Module, ids: torch.Tensor, names: tuple[str, ...], max_rows: int = 1024,
                     seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name → (input rows [rows, in], squared loss gradients at the output [rows, out], each row already scaled
    by its ``window_rows`` weight) of each named Linear, at the same pick of ≤ ``max_rows`` token positions
    (one backward pass per window; the weights ask for gradients only so that the outputs carry a graph to hook)."""
    width = ids.shape[1]
    keep, weights = window_rows(ids.shape[0], width, max_rows, seed)
    xs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    gs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    local, scale = keep[:0], weights[:0]

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            xs[name].append(args[0].detach().reshape(-1, args[0].shape[-1])[local].float())
            w = scale[:, None]
            output.register_hook(lambda g: gs[name].append(g.reshape(-1, g.shape[-1])[local].float().pow(2) * w))
        return fn

    with _gradients_of(model, names) as modules:
        handles = [modules[n].register_forward_hook(hook(n)) for n in names]
        try:
            for i, window in enumerate(ids):
                mine = (keep >= i * width) & (keep < (i + 1) * width)
                local, scale = keep[mine] - i * width, weights[mine]
                model(input_ids=window[None], labels=window[None]).loss.backward()
                model.zero_grad(set_to_none=True)
        finally:
            for h in handles:
                h.remove()
    return {n: (torch.cat(xs[n]), torch.cat(gs[n])) for n in names if xs[n]}


def measure(model: nn.Module, ids: torch.Tensor, lay: Layout, candidates: dict[str, QuantConfig],
            estimator: str = "fisher", max_rows: int = 1024, seed: int = 0,
            log: Callable[[str], None] | None = None,
            hessian_ids: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
    """label → layer → sensitivity of the fp32 ``model`` (left as it was) on the calibration windows ``ids``;
    calibrated candidates quantize with the Hessians of ``hessian_ids`` (the windows their quantization will use;
    None: of the scored rows)."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator={estimator!r} is unknown; expected one of {', '.join(ESTIMATORS)}")
    start = time.perf_counter()
    subs = _quantizers(candidates, lay)
    calibrated = any_calibrated(candidates)
    hessians = input_hessians(model, hessian_ids, lay.names) if calibrated and hessian_ids is not None else {}
    need_rows = estimator == "output" or (calibrated and not hessians)
    rows = capture_inputs(model, ids, list(lay.names), max_rows, seed) if need_rows else {}
    modules = dict(model.named_modules())
    tail = _TailLoss(model, ids) if estimator == "loss" else None
    fisher = fisher_diagonal(model, ids, lay.names) if estimator == "fisher" else {}
    grads = output_gradients(model, ids, lay.names, max_rows, seed) if estimator == "output-fisher" else {}
    out: dict[str, dict[str, float]] = {label: {} for label in candidates}
    for i, name in enumerate(lay.names):
        linear = modules[name]
        w = linear.weight.data.float().clone()
        x = rows.get(name)
        for label, sub in subs.items():
            wq = quantized_weight(sub, name, w, x, hessians.get(name))
            if estimator == "fisher":
                out[label][name] = float(0.5 * (fisher[name] * (wq - w).pow(2)).sum())
            elif estimator == "output-fisher":
                xg, g2 = grads[name]
                out[label][name] = float(0.5 * (g2 * (xg @ (wq - w).T).pow(2)).sum())
            elif estimator == "output":
                ref = (x @ w.T).double()
                out[label][name] = float((x @ (wq - w).T).double().pow(2).sum() / ref.pow(2).sum().clamp(min=1e-30))
            else:
                linear.weight.data.copy_(wq.to(linear.weight.dtype))
                out[label][name] = tail(name)
                linear.weight.data.copy_(w.to(linear.weight.dtype))
        if log is not None and (i + 1) % 20 == 0:
            log(f"sensitivity ({estimator}): {i + 1}/{len(lay.names)} layers, {time.perf_counter() - start:.0f} s")
    return out
