"""The budget solver: the brute-force optimum on small problems, never over the budget, one-line errors."""

from __future__ import annotations

import itertools
import random

import pytest

from lowbit.errors import ConfigError
from lowbit.fitting.solver import solve


def brute(sizes, losses, budget):
    best = None
    for choice in itertools.product(*(range(len(s)) for s in sizes)):
        size = sum(s[c] for s, c in zip(sizes, choice))
        loss = sum(w[c] for w, c in zip(losses, choice))
        if size <= budget and (best is None or loss < best[0] - 1e-12):
            best = (loss, size)
    return best


def problem(rng: random.Random, layers: int, options: int):
    sizes = [[rng.randint(1, 40) for _ in range(options)] for _ in range(layers)]
    losses = [[rng.random() * 10 for _ in range(options)] for _ in range(layers)]
    least, most = sum(map(min, sizes)), sum(map(max, sizes))
    return sizes, losses, rng.randint(least, most)


@pytest.mark.parametrize("seed", range(40))
def test_equals_brute_force(seed):
    rng = random.Random(seed)
    sizes, losses, budget = problem(rng, rng.randint(1, 6), rng.randint(1, 4))
    sol = solve(sizes, losses, budget)
    loss, _ = brute(sizes, losses, budget)
    assert sol.exact
    assert sol.loss == pytest.approx(loss)
    assert sol.size == sum(s[c] for s, c in zip(sizes, sol.choice)) <= budget
    assert sol.loss == pytest.approx(sum(w[c] for w, c in zip(losses, sol.choice)))


@pytest.mark.parametrize("seed", range(5))
def test_thinned_frontier_stays_within_budget(seed):
    """Many layers with distinct sizes overflow a tiny frontier: still feasible, and near the exact answer."""
    rng = random.Random(seed)
    sizes, losses, budget = problem(rng, 60, 4)
    thin = solve(sizes, losses, budget, max_points=50)
    full = solve(sizes, losses, budget)
    assert not thin.exact
    assert thin.size <= budget and full.size <= budget
    assert sum(s[c] for s, c in zip(sizes, thin.choice)) == thin.size
    assert full.loss <= thin.loss + 1e-9
    assert thin.loss <= full.loss * 1.25 + 1e-9


def test_budget_at_the_smallest_size_picks_every_smallest_option():
    sizes = [[8, 4, 3], [16, 8, 6], [2, 1, 1]]
    losses = [[0, 1, 2], [0, 1, 2], [0, 1, 0.5]]
    sol = solve(sizes, losses, 10)
    assert sol.choice == (2, 2, 2) and sol.size == 10


def test_below_the_smallest_size_names_it():
    with pytest.raises(ConfigError, match="smallest reachable size 10 bytes"):
        solve([[8, 4, 3], [16, 8, 6], [2, 1, 1]], [[0, 1, 2]] * 3, 9)
