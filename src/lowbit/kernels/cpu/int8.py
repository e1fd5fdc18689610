"""``cpu_int8``: int8 symmetric per-channel weights through torch's ``_weight_int8pack_mm``."""

from __future__ import annotations

import torch

from lowbit.kernels.base import Kernel, fake_linear, flat
from lowbit.kernels.cpu.features import cpu_declines
from lowbit.kernels.cpu.step import NativeCall

INT8_DENSE_MIN_M = 128  # rows of activations from which int8 runs as convert + dense matmul

# Defined with torch.library.define/impl rather than custom_op: the dispatcher then calls the CPU
# implementation directly, which saves 10-20 µs a call at M=1 (benchmarks/cpu_linear.py).
torch.library.define("lowbit::int8_linear_cpu", "(Tensor x, Tensor weight, Tensor scales, Tensor? bias) -> Tensor")


@torch.library.impl("lowbit::int8_linear_cpu", "CPU")
def int8_linear_cpu(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ (weight * scales[:, None]).T``: int8 [N, K] weight, per-channel scales in x's dtype."""
    x2, lead = flat(x)
    if x2.shape[0] >= INT8_DENSE_MIN_M:
        # prefill: the built-in's time grows linearly with M; converting the codes once and using the
        # dense matmul is faster from here on (benchmarks/cpu_linear.py)
        y = torch.nn.functional.linear(x2, weight.to(x2.dtype)) * scales
    else:
        y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), weight, scales)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, weight.shape[0])


@torch.library.register_fake("lowbit::int8_linear_cpu")
def _(x, weight, scales, bias):
    return fake_linear(x, weight.shape[0])


class CpuInt8Kernel(Kernel):
    name = "cpu_int8"
    priority = 10

    def handles(self, request):
        return request.kind == "int" and request.bits == 8

    def can_implement(self, request):
        why = cpu_declines(request)
        if why:
            return False, why
        if request.group_size is not None or not request.symmetric:
            return False, f"needs int8 symmetric per-channel, got {request.fmt.describe()}"
        return True, (f"aten._weight_int8pack_mm (int8 per-channel); convert + dense matmul from "
                      f"M={INT8_DENSE_MIN_M}")

    def prepare(self, tensors, request):
        # The canonical int8 codes are this kernel's layout already: only the scales change dtype.
        return {"scales": tensors["scales"].reshape(-1).to(request.compute_dtype)}

    def run(self, x, tensors, prepared, request, bias):
        return torch.ops.lowbit.int8_linear_cpu(x, tensors["qweight"], prepared["scales"], bias)

    def native_call(self, tensors, prepared, request):
        if request.compute_dtype != torch.float32:
            return None  # the C step runs fp32 activations
        return NativeCall("gemv8", tensors["qweight"], request.n, request.k, group=request.k, scales=prepared["scales"])
