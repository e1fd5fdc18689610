"""The kernel interface every implementation follows, and the table of kernels by name: defining a subclass with a
``name`` registers it (``register_kernel``); ``get_kernel`` finds it by name or by a former name."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, ClassVar

import torch

from lowbit.errors import KernelError

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
        """(True, how it runs the layer) or (False, why not), for a layer this kernel ``handles``."""
        raise NotImplementedError

    def accepts(self, request: KernelRequest) -> tuple[bool, str]:
        """``handles`` and then ``can_implement``: whether this kernel runs the layer, and how or why not."""
        if not self.handles(request):
            return False, f"{self.name} does not run {request.fmt.describe()}"
        return self.can_implement(request)

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

    def native_call(self, tensors: dict[str, torch.Tensor], prepared: dict[str, torch.Tensor], request: KernelRequest):
        """How the CPU decode step (``kernels/cpu/step.c``) runs this layer without Python: a
        ``kernels.cpu.step.NativeCall``, or None where this kernel has no C form (the model then decodes in Python)."""
        return None


def flat(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """[..., K] → [M, K] and the leading shape to restore."""
    return x.reshape(-1, x.shape[-1]), tuple(x.shape[:-1])


def fake_linear(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], n))


# ---- the table of kernels -------------------------------------------------------------------------------------

_KERNELS: dict[str, Kernel] = {}
_ALIASES: dict[str, str] = {}  # a former name → the kernel's name now


def register_kernel(kernel: Kernel, *, replace: bool = False) -> Kernel:
    """Make ``kernel`` selectable (by priority, and by name in ``kernel=`` / $LOWBIT_KERNEL), with its old names.

    Registering the same class again is a no-op; another kernel under a taken name is an error unless ``replace``.
    """
    taken = _KERNELS.get(kernel.name)
    if taken is not None and type(taken) is not type(kernel) and not replace:
        raise KernelError(f"kernel name {kernel.name!r} is already registered by {type(taken).__qualname__}; "
                          "choose another name, or pass replace=True to override it")
    if taken is not None and type(taken) is type(kernel) and not replace:
        return taken
    _KERNELS[kernel.name] = kernel
    for alias in kernel.aliases:
        _ALIASES[alias] = kernel.name
    return kernel


def kernel_names() -> list[str]:
    return sorted(_KERNELS)


def kernels() -> list[Kernel]:
    """Every registered kernel, in registration order."""
    return list(_KERNELS.values())


def get_kernel(name: str) -> Kernel:
    """The kernel called ``name``; a former name still works, with a FutureWarning naming the new one."""
    if name in _ALIASES:
        new = _ALIASES[name]
        warnings.warn(f"kernel {name!r} is now called {new!r}; the old name will stop working in a future "
                      f"release, use kernel={new!r} (or {new!r} in $LOWBIT_KERNEL)", FutureWarning, stacklevel=3)
        name = new
    try:
        return _KERNELS[name]
    except KeyError:
        raise KernelError(f"unknown kernel {name!r}; expected one of {kernel_names()}") from None
