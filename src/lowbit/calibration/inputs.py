"""What each transformer block receives on the calibration text, and running blocks on it.

``capture`` runs the model's embeddings once per batch with every block replaced by a recorder, so each
block's own arguments are kept: attention masks and rotary embeddings differ per block in models that
alternate sliding and full attention (Gemma 3). Only the first block's hidden states are kept; later
blocks get theirs from the (quantized) block before them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn



@dataclasses.dataclass
class Batch:
    """One calibration batch at one block: hidden states and the block's other arguments."""

    hidden: torch.Tensor
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _Stop(Exception):
    pass


class _Recorder(nn.Module):
    def __init__(self, index: int, sink: list, last: bool) -> None:
        super().__init__()
        self.index, self.sink, self.last = index, sink, last

    def forward(self, hidden, *args, **kwargs):
        self.sink.append((self.index, hidden, args, kwargs))
        if self.last:
            raise _Stop
        return hidden


def capture(model: nn.Module, blocks: nn.ModuleList, batches: list[torch.Tensor],
            device: torch.device) -> tuple[list[torch.Tensor], list[list[tuple[tuple, dict]]]]:
    """(first block's hidden states per batch, per block the (args, kwargs) of each batch)."""
    originals = list(blocks)
    per_block: list[list[tuple[tuple, dict]]] = [[] for _ in originals]
    hidden0 = []
    sink: list = []
    try:
        for i in range(len(originals)):
            blocks[i] = _Recorder(i, sink, last=i == len(originals) - 1)
        with torch.no_grad():
            for ids in batches:
                sink.clear()
                try:
                    model(input_ids=ids.to(device), use_cache=False)
                except _Stop:
                    pass
                for index, hidden, args, kwargs in sink:
                    if index == 0:
                        hidden0.append(hidden)
                    per_block[index].append((args, {k: v for k, v in kwargs.items() if k != "use_cache"}))
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
    return hidden0, per_block


class BlockInputs:
    """The calibration batches at one block; methods run the block (or any of its modules) on them."""

    def __init__(self, hidden: list[torch.Tensor], calls: list[tuple[tuple, dict]]) -> None:
        self.batches = [Batch(h, a, k) for h, (a, k) in zip(hidden, calls, strict=True)]

    @property
    def tokens(self) -> int:
        return sum(b.hidden.shape[0] * b.hidden.shape[1] for b in self.batches)

    def run(self, block: nn.Module, first: int | None = None) -> list[torch.Tensor]:
        """The block's outputs, one tensor per batch (of the ``first`` batches only, if given)."""
        with torch.no_grad():
            return [_first(block(b.hidden, *b.args, **b.kwargs)) for b in self.batches[:first]]

    def feed(self, block: nn.Module, modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None],
             first: int | None = None) -> None:
        """Run the block over every batch (or the ``first`` ones), calling ``fn(name, x)`` with each named
        module's input ``x``."""
        with self.hooks(modules, lambda name, args, kwargs: fn(name, args[0] if args else next(iter(kwargs.values())))):
            self.run(block, first)

    def calls(self, block: nn.Module, name: str, module: nn.Module) -> list[tuple[tuple, dict]]:
        """The (args, kwargs) ``module`` receives in each batch, to run it alone later (e.g. attention)."""
        out: list[tuple[tuple, dict]] = []
        with self.hooks({name: module}, lambda _, args, kwargs: out.append((args, kwargs))):
            self.run(block)
        return out

    @contextmanager
    def hooks(self, modules: dict[str, nn.Module], fn: Callable[[str, tuple, dict], None]) -> Iterator[None]:
        handles = [m.register_forward_pre_hook(lambda _, args, kwargs, n=n: fn(n, args, kwargs), with_kwargs=True)
                   for n, m in modules.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out
