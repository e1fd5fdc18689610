"""The interface every storage format implements, and the table of formats by kind.

A format is a frozen dataclass (``IntFormat``, ``CodebookFormat``, ``MxFormat``, ``Fp8Format``, ...) that says
exactly which tensors a quantized [N, K] weight stores, how they unpack, and how many bits they cost.
Subclasses register themselves with ``kind=...``; :func:`format_from_key` rebuilds one from its
:meth:`WeightFormat.key`, which is how the one reference op learns which format it is running.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import ClassVar

import torch
import torch.nn.functional as F

_FORMATS: dict[str, type[WeightFormat]] = {}


class WeightFormat:
    """Base of the format dataclasses. Subclasses implement ``expected_tensors``, ``dequantize`` and
    ``describe``; ``reference_linear`` is the pure-torch layer every fast kernel is tested against."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, kind: str = "", **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if kind:
            cls.kind = kind
            _FORMATS[kind] = cls

    def expected_tensors(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name → (shape, dtype) of every tensor stored for an [n, k] weight, in storage order."""
        raise NotImplementedError

    def tensor_names(self) -> list[str]:
        # the names never depend on the shape; any valid shape lists them
        return list(self.expected_tensors(256, 256))

    def dequantize(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Stored tensors → the [N, K] weight they represent, in ``dtype``."""
        raise NotImplementedError

    def reference_linear(self, x: torch.Tensor, tensors: dict[str, torch.Tensor],
                         bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ W.T + bias`` in pure torch, in x's dtype (formats with run-time activation scaling override it)."""
        return F.linear(x, self.dequantize(tensors, x.dtype), None if bias is None else bias.to(x.dtype))

    def describe(self) -> str:
        raise NotImplementedError

    def bits_per_weight(self, n: int, k: int) -> float:
        """Every stored bit (codes, scales, zeros, second-level scales) over the n * k weights."""
        total = sum(torch.Size(s).numel() * d.itemsize for s, d in self.expected_tensors(n, k).values())
        return total * 8 / (n * k)

    def key(self) -> str:
        """A string that :func:`format_from_key` turns back into this format (torch ops take strings)."""
        return json.dumps({"kind": self.kind, **dataclasses.asdict(self)}, sort_keys=True)


@functools.lru_cache(maxsize=256)
def format_from_key(key: str) -> WeightFormat:
    fields = json.loads(key)
    return _FORMATS[fields.pop("kind")](**fields)


def format_kinds() -> list[str]:
    return sorted(_FORMATS)


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * dtype.itemsize
