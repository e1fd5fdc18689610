"""The one reader of checkpoint tensors: by name, in any order, each checked for NaN/Inf as it is read.

A shard is opened when one of its tensors is first asked for and closed as soon as all its tensors were read,
so reading in file order (``in_file_order``) holds one shard open at a time, as streaming a model needs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Self

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from lowbit.errors import ConfigError
from lowbit.loading.checkpoint import Checkpoint, reading
from lowbit.loading.tensors import NONFINITE, check_finite


def clamp_nonfinite(nonfinite: str) -> bool:
    """Whether ``nonfinite`` ('error' or 'clamp', the loaders' argument) asks to clamp NaN/Inf values."""
    if nonfinite not in NONFINITE:
        raise ConfigError(f"nonfinite={nonfinite!r} is not valid; expected one of {list(NONFINITE)}")
    return nonfinite == "clamp"


class Reader:
    """The checkpoint's tensors by name. ``reader(key)`` is the tensor checked for NaN/Inf (an error naming
    it, or with ``clamp`` a clamped copy counted in ``clamped``); ``shape`` and ``rows`` read without checks.
    Use it as a context manager: leaving it closes the shards still open."""

    def __init__(self, ckpt: Checkpoint, *, clamp: bool = False, progress: bool = False, desc: str = "reading") -> None:
        self.ckpt, self.clamp, self.used = ckpt, clamp, set()
        self.clamped: dict[str, int] = {}  # key → NaN/Inf values replaced
        self.left = Counter(ckpt.weight_map.values())
        self.files: dict[str, object] = {}
        self.bar = tqdm(total=len(ckpt.weight_map), desc=desc, unit="tensor", disable=not progress)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        for f in self.files.values():
            f.__exit__(None, None, None)
        self.files.clear()
        self.bar.close()

    def __call__(self, key: str) -> torch.Tensor:
        shard = self.ckpt.weight_map[key]
        tensor = self._do(shard, lambda f: f.get_tensor(key))
        if key not in self.used:
            self.used.add(key)
            self.bar.update()
            self.left[shard] -= 1
            if not self.left[shard] and shard in self.files:
                self.files.pop(shard).__exit__(None, None, None)
        return check_finite(key, tensor, self.clamp, self.clamped)

    def in_file_order(self) -> Iterator[str]:
        """Every key, shard by shard (shards sorted, keys in index order): one shard open at a time."""
        by_shard: dict[str, list[str]] = {}
        for key, shard in self.ckpt.weight_map.items():
            by_shard.setdefault(shard, []).append(key)
        for _, keys in sorted(by_shard.items()):
            yield from keys

    def shape(self, key: str) -> list[int]:
        return list(self._do(self.ckpt.weight_map[key], lambda f: f.get_slice(key).get_shape()))

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self._do(self.ckpt.weight_map[key], lambda f: f.get_slice(key)[start:stop])

    def _do(self, shard: str, fn):
        path = self.ckpt.path / shard
        with reading(path):
            if shard not in self.files:
                self.files[shard] = safe_open(str(path), framework="pt", device="cpu").__enter__()
            return fn(self.files[shard])
