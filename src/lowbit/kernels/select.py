"""Kernel choice: the highest-priority kernel whose ``can_implement`` accepts the layer; never silent."""

from __future__ import annotations

import os

import torch

from lowbit.errors import KernelError
from lowbit.kernels.base import Kernel, get_kernel, kernel_names, kernels
from lowbit.kernels.cpu import tune as cpu_tune
from lowbit.kernels.dtypes import AUTO, resolve_compute_dtype
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


def choose_for_layer(fmt, shape: tuple[int, int], tensors: dict[str, torch.Tensor], compute_choice,
                     model_dtype: torch.dtype, forced: str | None = None) -> tuple[KernelRequest, Kernel, str]:
    """(request, kernel, reason) for a layer holding ``tensors``: its compute dtype resolved and its kernel chosen.

    On the CPU, unless a kernel is forced or ``$LOWBIT_CPU_TUNE=0``, by measurement (``kernels/cpu/tune.py``:
    with an ``auto`` compute dtype, fp32 and bf16 activations are both tried); elsewhere by :func:`select`.
    """
    device = next(iter(tensors.values())).device
    if device.type == "cpu" and not (forced or os.environ.get(KERNEL_ENV)) and cpu_tune.enabled():
        dtypes = (torch.float32, torch.bfloat16) if compute_choice == AUTO else (compute_choice,)
        name, dtype, reason = cpu_tune.best(fmt, shape, dtypes, tensors)
        return kernel_request(fmt, shape, device, dtype), get_kernel(name), reason
    request = kernel_request(fmt, shape, device, resolve_compute_dtype(compute_choice, device, model_dtype))
    kernel, reason = select(request, forced)
    return request, kernel, reason
