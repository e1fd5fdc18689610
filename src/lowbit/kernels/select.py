"""Kernel choice: the highest-priority kernel whose ``can_implement`` accepts the layer; never silent."""

from __future__ import annotations

import os

import torch

from lowbit.errors import KernelError
from lowbit.kernels.base import Kernel, get_kernel, kernel_names, kernels
from lowbit.kernels.request import KernelRequest, kernel_request

KERNEL_ENV = "LOWBIT_KERNEL"


def select(request: KernelRequest, forced: str | None = None) -> tuple[Kernel, str]:
    """(kernel, reason). ``forced`` (or $LOWBIT_KERNEL) names one; it must be able to run the layer."""
    forced = forced or os.environ.get(KERNEL_ENV) or None
    if forced:
        kernel = get_kernel(forced)
        ok, why = kernel.accepts(request)
        if not ok:
            raise KernelError(f"forced kernel {forced!r} cannot run {request.fmt.describe()} {list(request.shape)} on "
                              f"{request.device}: {why}; unset {KERNEL_ENV} or choose another of {kernel_names()}")
        return kernel, f"forced: {why}"
    declined = []
    for kernel in sorted(kernels(), key=lambda k: -k.priority):
        if not kernel.handles(request):
            continue
        ok, why = kernel.can_implement(request)
        if ok:
            return kernel, why if not declined else f"{why} ({'; '.join(declined)})"
        declined.append(f"{kernel.name}: {why}")
    raise KernelError(f"no kernel can run {request.fmt.describe()} on {request.device}")  # reference always can


def choose(fmt, device: torch.device, shape: tuple[int, int], compute_dtype: torch.dtype,
           forced: str | None = None) -> tuple[Kernel, str]:
    """:func:`select` for a format rather than a layer: builds the request of an [n, k] weight on ``device``."""
    return select(kernel_request(fmt, shape, device, compute_dtype), forced)
