"""The kernel interface every implementation follows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lowbit.formats import WeightFormat


class Kernel:
    """One way to compute ``x @ W.T`` for a quantized weight.

    ``prepare`` turns the canonical stored tensors into the kernel's private layout (non-persistent
    buffers, made after loading and again after ``.to(device)``); ``run`` computes the layer.
    """

    name: str = ""
    priority: int = 0  # higher is tried first
    rebuilds_canonical: bool = False  # canonical_from_prepared works: the layer keeps one copy
    row_block: int = 1  # the kernel layout keeps rows together in blocks this tall: row slices must align to them

    def handles(self, fmt: WeightFormat) -> bool:
        """Whether this kernel is about this kind of weight at all (others are not listed as declined)."""
        return True

    def can_implement(self, fmt: WeightFormat, device: torch.device, shape: tuple[int, int],
                      compute_dtype: torch.dtype) -> tuple[bool, str]:
        raise NotImplementedError

    def prepare(self, tensors: dict[str, torch.Tensor], fmt: WeightFormat, compute_dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {}

    def dropped_names(self, fmt: WeightFormat) -> tuple[str, ...]:
        """The canonical tensors a layer drops after ``prepare``: ``canonical_from_prepared`` rebuilds them."""
        return ("qweight",) if self.rebuilds_canonical else ()

    def canonical_from_prepared(self, prepared: dict[str, torch.Tensor], fmt: WeightFormat,
                                shape: tuple[int, int]) -> dict[str, torch.Tensor] | None:
        """The stored tensors that ``prepare`` consumed, rebuilt from the kernel layout.

        A kernel that can do this lets the layer drop its canonical copy, so only one copy of the
        weight is in memory; saving rebuilds the canonical tensors. ``None``: keep the canonical copy.
        """
        return None

    def run(self, x: torch.Tensor, tensors: dict[str, torch.Tensor], prepared: dict[str, torch.Tensor],
            fmt: WeightFormat, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


def flat(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """[..., K] → [M, K] and the leading shape to restore."""
    return x.reshape(-1, x.shape[-1]), tuple(x.shape[:-1])


def fake_linear(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], n))
