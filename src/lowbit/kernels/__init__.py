"""Kernels: torch.library ops with a pure-torch reference and fast per-device implementations.

Each layer asks with one :class:`KernelRequest` (``kernel_request``); ``select`` picks the highest-priority
registered kernel whose ``can_implement`` accepts it and says why. A kernel registers itself by subclassing
:class:`Kernel` with a ``name``; the imports below define the built-in ones.
"""

from lowbit.kernels.base import Kernel, get_kernel, kernel_names, kernels, register_kernel
from lowbit.kernels.dtypes import AUTO, resolve_compute_dtype
from lowbit.kernels.request import Activations, KernelRequest, kernel_request
from lowbit.kernels.select import KERNEL_ENV, choose, choose_for_layer, select
from lowbit.kernels import reference, cpu, triton  # noqa: F401, I001  (each defines and registers its kernels)

__all__ = ["AUTO", "KERNEL_ENV", "Activations", "Kernel", "KernelRequest", "choose", "choose_for_layer", "get_kernel", "kernel_names",
           "kernel_request", "kernels", "register_kernel", "resolve_compute_dtype", "select"]
