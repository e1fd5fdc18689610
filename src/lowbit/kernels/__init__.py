"""Kernels: torch.library ops with a pure-torch reference and fast per-device implementations.

``select.choose`` picks one per layer through each kernel's ``can_implement`` and says why.
"""

from lowbit.kernels.base import Kernel
from lowbit.kernels.select import KERNEL_ENV, choose, kernel_names, register_kernel

__all__ = ["KERNEL_ENV", "Kernel", "choose", "kernel_names", "register_kernel"]
