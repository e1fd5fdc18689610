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

from lowbit.errors import CalibrationError



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

    def run(self, block: nn.Module, first: int | None = None, only: int | None = None) -> list[torch.Tensor]:
        """The block's outputs, one tensor per batch (of the ``first`` batches only, or batch ``only``, if given)."""
        batches = self.batches[:first] if only is None else self.batches[only:only + 1]
        with torch.no_grad():
            return [_first(block(b.hidden, *b.args, **b.kwargs)) for b in batches]

    def feed(self, block: nn.Module, modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None],
             first: int | None = None, only: int | None = None) -> None:
        """Run the block over every batch (or the ``first`` ones, or batch ``only``), calling ``fn(name, x)`` with
        each named module's input ``x``."""
        def hook(name: str, args: tuple, kwargs: dict) -> None:  # returns None: the module's input is not replaced
            fn(name, args[0] if args else next(iter(kwargs.values())))

        with self.hooks(modules, hook):
            self.run(block, first, only)

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


def call_stages(block: nn.Module, linears: dict[str, nn.Module], inputs: BlockInputs) -> list[list[str]]:
    """The Linears in call order, grouped by shared input (q/k/v; gate/up), from one batch."""
    order: list[tuple[str, torch.Tensor]] = []  # the inputs are held so that their ids stay unique
    inputs.feed(block, linears, lambda name, x: order.append((name, x)), first=1)
    check_used(linears, {name for name, _ in order})
    stages: list[list[str]] = []
    prev = None
    for name, x in order:
        if name in (n for stage in stages for n in stage):
            continue
        if stages and x is prev:
            stages[-1].append(name)
        else:
            stages.append([name])
        prev = x
    return stages


def check_used(linears: dict[str, nn.Module], used: set[str]) -> None:
    missing = [n for n in linears if n not in used]
    if missing:
        raise CalibrationError(f"{missing[0]} received no input while its block ran; expected every Linear of a "
                               "block to be used; keep it unquantized with modules_to_not_convert")


@dataclasses.dataclass
class Reference:
    """What the full-precision model computes at one block: the block before any of its layers was quantized, and
    its inputs from the full-precision blocks before it (for methods that match the full-precision outputs)."""

    block: nn.Module
    inputs: BlockInputs

    def modules(self, linears: dict[str, nn.Module], prefix: str) -> dict[str, nn.Module]:
        """The full-precision copies of ``linears`` (named in the model, under ``prefix``)."""
        return {n: self.block.get_submodule(n[len(prefix) + 1:]) for n in linears}


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out
