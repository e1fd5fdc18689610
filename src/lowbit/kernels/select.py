"""Kernel choice: the highest-priority kernel whose ``can_implement`` accepts the layer; never silent."""

from __future__ import annotations

import os

import torch

from lowbit.errors import KernelError
from lowbit.kernels.base import Kernel
from lowbit.kernels.cpu import CpuInt4Kernel, CpuInt8Kernel
from lowbit.kernels.reference import ReferenceKernel
from lowbit.kernels.triton import TRITON_KERNELS

KERNEL_ENV = "LOWBIT_KERNEL"
_KERNELS: dict[str, Kernel] = {}


def register_kernel(kernel: Kernel) -> Kernel:
    _KERNELS[kernel.name] = kernel
    return kernel


for _k in (ReferenceKernel(), CpuInt8Kernel(), CpuInt4Kernel(), *TRITON_KERNELS):
    register_kernel(_k)


def kernel_names() -> list[str]:
    return sorted(_KERNELS)


def get_kernel(name: str) -> Kernel:
    try:
        return _KERNELS[name]
    except KeyError:
        raise KernelError(f"unknown kernel {name!r}; expected one of {kernel_names()}") from None


def choose(fmt, device: torch.device, shape: tuple[int, int], compute_dtype: torch.dtype,
           forced: str | None = None) -> tuple[Kernel, str]:
    """(kernel, reason). ``forced`` (or $LOWBIT_KERNEL) names one; it must be able to run the layer."""
    forced = forced or os.environ.get(KERNEL_ENV) or None
    if forced:
        kernel = get_kernel(forced)
        ok, why = kernel.can_implement(fmt, device, shape, compute_dtype)
        if not ok:
            raise KernelError(f"forced kernel {forced!r} cannot run {fmt.describe()} {list(shape)} on {device}: {why}; "
                              f"unset {KERNEL_ENV} or choose another of {kernel_names()}")
        return kernel, f"forced: {why}"
    declined = []
    for kernel in sorted(_KERNELS.values(), key=lambda k: -k.priority):
        if not kernel.handles(fmt):
            continue
        ok, why = kernel.can_implement(fmt, device, shape, compute_dtype)
        if ok:
            return kernel, why if not declined else f"{why} ({'; '.join(declined)})"
        declined.append(f"{kernel.name}: {why}")
    raise KernelError(f"no kernel can run {fmt.describe()} on {device}")  # reference always can
