"""The kernel interface every implementation follows; defining a subclass with a ``name`` registers it."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from lowbit.kernels.registry import register_kernel

if TYPE_CHECKING:
    from lowbit.kernels.request import KernelRequest


class Kernel:
    """One way to compute ``x @ W.T`` for a quantized weight.

    Every method receives the layer's :class:`~lowbit.kernels.request.KernelRequest`. ``can_implement`` says
    whether (and how, or why not) this kernel runs it; ``prepare`` turns the canonical stored tensors into the
    kernel's private layout (non-persistent buffers, made after loading and again after ``.to(device)``);
    ``run`` computes the layer. A subclass that sets ``name`` is registered when it is defined (one instance).
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()  # former names, still accepted by kernel= and $LOWBIT_KERNEL
    priority: ClassVar[int] = 0  # higher is tried first
    rebuilds_canonical: ClassVar[bool] = False  # canonical_from_prepared works: the layer keeps one copy
    row_block: ClassVar[int] = 1  # the layout keeps rows together in blocks this tall: row slices must align

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            register_kernel(cls())

    def handles(self, request: KernelRequest) -> bool:
        """Whether this kernel is about this kind of weight at all (others are not listed as declined)."""
        return True

    def can_implement(self, request: KernelRequest) -> tuple[bool, str]:
        """(True, how it runs the layer) or (False, why not)."""
        raise NotImplementedError

    def prepare(self, tensors: dict[str, torch.Tensor], request: KernelRequest) -> dict[str, torch.Tensor]:
        return {}

    def dropped_names(self, request: KernelRequest) -> tuple[str, ...]:
        """The canonical tensors a layer drops after ``prepare``: ``canonical_from_prepared`` rebuilds them."""
        return ("qweight",) if self.rebuilds_canonical else ()

    def canonical_from_prepared(self, prepared: dict[str, torch.Tensor],
                                request: KernelRequest) -> dict[str, torch.Tensor] | None:
        """The stored tensors that ``prepare`` consumed, rebuilt from the kernel layout.

        A kernel that can do this lets the layer drop its canonical copy, so only one copy of the
        weight is in memory; saving rebuilds the canonical tensors. ``None``: keep the canonical copy.
        """
        return None

    def run(self, x: torch.Tensor, tensors: dict[str, torch.Tensor], prepared: dict[str, torch.Tensor],
            request: KernelRequest, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


def flat(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """[..., K] → [M, K] and the leading shape to restore."""
    return x.reshape(-1, x.shape[-1]), tuple(x.shape[:-1])


def fake_linear(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], n))
