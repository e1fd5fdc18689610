"""``triton_fp8``: e4m3 weights with a scale per output channel, weight-only or W8A8 (dynamic fp8 activations)."""

from __future__ import annotations

import torch

from lowbit.kernels.request import Activations
from lowbit.kernels.triton.family import Family, TritonFormat
from lowbit.kernels.triton.kernel import TritonKernel

FP8_CAPABILITY = (8, 9)


class TritonFp8Kernel(TritonKernel):
    name = "triton_fp8"

    def handles(self, request):
        return request.kind == "fp8"

    def triton_format(self, request):
        return TritonFormat(Family.FP8, dynamic=request.activations is Activations.FP8_ROWS)

    def unsupported(self, request):
        if request.scale_tile is not None:
            return f"block-scaled fp8 ({request.fmt.describe()}) is not supported; per-channel scales only"
        if request.device.type != "cuda":  # Triton's interpreter, on the CPU
            return None
        cap = torch.cuda.get_device_capability(request.device)
        if cap < FP8_CAPABILITY:
            return (f"compute capability {cap[0]}.{cap[1]} has no fp8 instructions (needs "
                    f"{FP8_CAPABILITY[0]}.{FP8_CAPABILITY[1]}+)")
        return None

    def tensors(self, tensors, prepared):
        return tensors["qweight"], tensors["scales"], None
