"""``cpu_dense``: the weight dequantized once, at prepare, to the compute dtype, and run as a plain dense matmul.

It is the floor of the CPU tuner (``kernels/cpu/tune.py``): where no quantized kernel beats the layer's original
dense fp32 product on this CPU, the layer runs as that product, holding the dequantized copy beside its stored
codes (more memory, never slower). ``select`` never picks it by priority; the tuner or ``kernel="cpu_dense"`` do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.kernels.base import Kernel
from lowbit.kernels.cpu.step import NativeCall
from lowbit.kernels.request import Activations


class CpuDenseKernel(Kernel):
    name = "cpu_dense"
    priority = -10

    def can_implement(self, request):
        if request.device.type != "cpu":
            return False, f"device is {request.device.type}, this kernel runs on cpu"
        if request.activations is not Activations.NONE:
            return False, "the format quantizes activations at run time; a dense weight would skip that"
        mb = request.n * request.k * request.compute_dtype.itemsize / 2**20
        return True, f"dequantized once to a dense {str(request.compute_dtype).removeprefix('torch.')} weight " \
                     f"({mb:.1f} MiB beside the stored codes) + F.linear"

    def prepare(self, tensors, request):
        return {"weight": request.fmt.decode(tensors, request.compute_dtype)}

    def run(self, x, tensors, prepared, request, bias):
        return F.linear(x, prepared["weight"], None if bias is None else bias.to(x.dtype))

    def native_call(self, tensors, prepared, request):
        weight = prepared["weight"]
        if weight.dtype != torch.float32:
            return None
        return NativeCall("dense", weight, request.n, request.k)
