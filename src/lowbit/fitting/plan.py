"""The budget, and the plan chosen under it: one candidate per quantized Linear.

A budget is bits per weight (``"4.25bpw"``: every stored bit of the quantized Linears — codes, scales, zeros —
over their weights, as ``lowbit inspect`` and ``lowbit report`` count them) or a size (``"2.1GB"``, ``"500MB"``,
``"1GiB"``: the output's safetensors files, so the tensors kept at full precision count too, plus an allowance
for the files' headers).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from lowbit.errors import ConfigError
from lowbit.fitting.candidates import Layout
from lowbit.fitting.solver import solve
from lowbit.loading.save import parse_size

_BPW = re.compile(r"\s*(\d+(?:\.\d+)?)\s*bpw\s*", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Budget:
    text: str
    bpw: float | None = None  # bits per quantized weight
    nbytes: int | None = None  # bytes of the output's shards

    def describe(self, lay: Layout, linear_bytes: int) -> str:
        """The achieved size in the budget's own unit."""
        if self.bpw is not None:
            return f"{8 * linear_bytes / lay.params:.4f} bpw"
        return _size(lay.kept_bytes + linear_bytes + lay.header_bytes)


def parse_budget(budget: str | float | int) -> Budget:
    """``"4.25bpw"`` → bits per weight; ``"2.1GB"`` (or bytes as an int) → a size."""
    if isinstance(budget, float):
        return Budget(f"{budget}bpw", bpw=budget)
    m = _BPW.fullmatch(str(budget))
    if m:
        return Budget(str(budget), bpw=float(m.group(1)))
    try:
        return Budget(str(budget), nbytes=parse_size(budget, "budget"))
    except ConfigError:
        raise
    except Exception:
        raise ConfigError(f"budget {budget!r} is not a budget; expected bits per weight like '4.25bpw' or a size like "
                          "'2.1GB' or '500MB'") from None


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.4f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.4f} MB"


def linear_cap(budget: Budget, lay: Layout) -> int:
    """Bytes the quantized Linears may take."""
    if budget.bpw is not None:
        return int(budget.bpw * lay.params // 8)
    return budget.nbytes - lay.kept_bytes - lay.header_bytes


def above_full_precision(budget: Budget, lay: Layout) -> bool:
    """Whether the budget holds the model as it is (every Linear at the checkpoint's own precision)."""
    if budget.bpw is not None:
        return budget.bpw >= lay.dense_bits
    return budget.nbytes >= lay.dense_bytes() + lay.header_bytes


def check_reachable(budget: Budget, lay: Layout, labels: list[str]) -> None:
    """Raise ConfigError naming the smallest reachable size when even the smallest choice per layer is over."""
    least = sum(min(lay.nbytes[label][name] for label in labels) for name in lay.names)
    if least > linear_cap(budget, lay):
        smallest = min(labels, key=lambda label: lay.bytes_of(dict.fromkeys(lay.names, label)))
        raise ConfigError(f"budget {budget.text} is below the smallest reachable size {budget.describe(lay, least)} "
                          f"(every layer {smallest}); expected a budget of at least that, or a smaller candidate")


@dataclasses.dataclass(frozen=True)
class LayerChoice:
    name: str
    shape: tuple[int, int]
    label: str  # the chosen candidate
    bits_per_weight: float
    sensitivity: dict[str, float]  # of every candidate; the chosen one's is sensitivity[label]


@dataclasses.dataclass(frozen=True)
class FitPlan:
    model: str
    budget: str
    estimator: str
    candidates: dict[str, dict[str, Any]]  # label → its config (to_dict)
    layers: tuple[LayerChoice, ...]
    bpw: float  # achieved, over the quantized Linears
    linear_bytes: int  # of the quantized Linears
    total_bytes: int  # predicted size of the output's shards (headers' allowance included)
    budget_achieved: str  # the achieved size in the budget's unit
    predicted: float  # the sum of the chosen sensitivities
    exact: bool  # the solver's answer is provably optimal

    def labels(self) -> dict[str, str]:
        return {x.name: x.label for x in self.layers}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for x in self.layers:
            out[x.label] = out.get(x.label, 0) + 1
        return out

    def summary(self) -> str:
        mix = ", ".join(f"{n} x {label}" for label, n in sorted(self.counts().items()))
        return (f"budget {self.budget}: achieved {self.budget_achieved} ({self.bpw:.4f} bpw over the quantized "
                f"Linears, {self.total_bytes / 1e6:.1f} MB in all); {mix}; predicted {self.estimator} "
                f"sensitivity {self.predicted:.4g}" + ("" if self.exact else " (solver thinned: near-optimal)"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choose(lay: Layout, sens: dict[str, dict[str, float]], budget: Budget, model: str = "",
           estimator: str = "fisher", candidates: dict[str, dict[str, Any]] | None = None) -> FitPlan:
    """The plan with the least summed sensitivity whose size fits ``budget`` (never over it)."""
    labels = list(sens)
    cap = linear_cap(budget, lay)
    sizes = [[lay.nbytes[label][name] for label in labels] for name in lay.names]
    losses = [[sens[label][name] for label in labels] for name in lay.names]
    check_reachable(budget, lay, labels)
    sol = solve(sizes, losses, cap)
    layers = tuple(LayerChoice(name, lay.shapes[name], labels[c], 8 * lay.nbytes[labels[c]][name] / (
        lay.shapes[name][0] * lay.shapes[name][1]), {label: sens[label][name] for label in labels})
        for name, c in zip(lay.names, sol.choice))
    return FitPlan(model, budget.text, estimator, candidates or {}, layers, 8 * sol.size / lay.params, sol.size,
                   lay.kept_bytes + sol.size + lay.header_bytes, budget.describe(lay, sol.size), sol.loss, sol.exact)
