"""The table of kernels by name. Kernel classes add themselves when defined (``Kernel.__init_subclass__``)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from lowbit.errors import KernelError

if TYPE_CHECKING:
    from lowbit.kernels.base import Kernel

_KERNELS: dict[str, Kernel] = {}
_ALIASES: dict[str, str] = {}  # a former name → the kernel's name now


def register_kernel(kernel: Kernel) -> Kernel:
    """Make ``kernel`` selectable (by priority, and by name in ``kernel=`` / $LOWBIT_KERNEL), with its old names."""
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
