"""One option per layer, least total predicted loss, total size within a budget (a multiple-choice knapsack).

The solver keeps, layer after layer, the Pareto frontier of (size so far, loss so far) over partial choices: a
partial choice that is both larger and worse than another is dropped, and so is one already over the budget.
Sizes are integers (bytes), so the frontier is exact: on small problems the result is the brute-force optimum.
When the frontier grows beyond ``max_points`` it is thinned to the best point per size bucket of budget /
``max_points`` bytes; each kept point is still an exact sum of real sizes, so the budget is never exceeded and the
answer is optimal up to one bucket of size. ``Solution.exact`` says whether thinning happened.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lowbit.errors import ConfigError

MAX_POINTS = 20000


@dataclasses.dataclass(frozen=True)
class Solution:
    choice: tuple[int, ...]  # the option index per layer
    size: int  # bytes
    loss: float  # the sum of the chosen options' losses
    exact: bool  # no frontier thinning: provably optimal


def _pareto(size: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats in both size and loss (ties: the first)."""
    order = np.lexsort((loss, size))
    best = np.minimum.accumulate(loss[order])
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = loss[order][1:] < best[:-1]
    return order[keep]


def _thin(size: np.ndarray, loss: np.ndarray, budget: int, max_points: int) -> np.ndarray:
    """The least-loss point of each of ``max_points`` size buckets (indices into the frontier)."""
    bucket = size * max_points // max(budget, 1)
    order = np.lexsort((loss, bucket))
    first = np.ones(len(order), dtype=bool)
    first[1:] = bucket[order][1:] != bucket[order][:-1]
    return np.sort(order[first])


def solve(sizes: list[list[int]], losses: list[list[float]], budget: int, max_points: int = MAX_POINTS) -> Solution:
    """Choose ``choice[i]`` per layer minimizing ``sum(losses[i][choice[i]])`` with ``sum(sizes[i][choice[i]])`` at
    most ``budget``. Raises ConfigError naming the smallest reachable size when nothing fits."""
    if len(sizes) != len(losses) or any(len(s) != len(w) or not s for s, w in zip(sizes, losses)):
        raise ConfigError("solve: sizes and losses must give the same non-empty options for every layer")
    least = sum(min(s) for s in sizes)
    if least > budget:
        raise ConfigError(f"budget {budget} bytes is below the smallest reachable size {least} bytes; expected a "
                          f"budget of at least {least}")
    size = np.zeros(1, dtype=np.int64)
    loss = np.zeros(1, dtype=np.float64)
    steps: list[tuple[np.ndarray, np.ndarray]] = []  # per layer: (parent point, option) of each new point
    least_after = np.cumsum([min(s) for s in sizes][::-1])[::-1].tolist()[1:] + [0]  # smallest size of the rest
    exact = True
    for i, (opt_size, opt_loss) in enumerate(zip(sizes, losses)):
        opt_size = np.asarray(opt_size, dtype=np.int64)
        opt_loss = np.asarray(opt_loss, dtype=np.float64)
        new_size = (size[:, None] + opt_size[None, :]).ravel()
        new_loss = (loss[:, None] + opt_loss[None, :]).ravel()
        parent = np.repeat(np.arange(len(size)), len(opt_size))
        option = np.tile(np.arange(len(opt_size)), len(size))
        ok = np.flatnonzero(new_size + least_after[i] <= budget)  # the rest must still fit
        keep = ok[_pareto(new_size[ok], new_loss[ok])]
        if len(keep) > max_points:
            keep = keep[_thin(new_size[keep], new_loss[keep], budget, max_points)]
            exact = False
        size, loss = new_size[keep], new_loss[keep]
        steps.append((parent[keep], option[keep]))
    point = int(np.argmin(loss))
    best_size, best_loss = int(size[point]), float(loss[point])
    choice = []
    for parent, option in reversed(steps):
        choice.append(int(option[point]))
        point = int(parent[point])
    return Solution(tuple(reversed(choice)), best_size, best_loss, exact)
