"""``triton_int8``: int8 symmetric codes with a scale per output channel (weight-only)."""

from __future__ import annotations

from lowbit.kernels.triton.family import Family, TritonFormat
from lowbit.kernels.triton.kernel import TritonKernel


class TritonInt8Kernel(TritonKernel):
    name = "triton_int8"

    def handles(self, request):
        return request.kind == "int" and request.bits == 8

    def triton_format(self, request):
        return TritonFormat(Family.INT8)

    def unsupported(self, request):
        if request.group_size is not None or not request.symmetric:
            return f"needs int8 symmetric per-channel, got {request.fmt.describe()}"
        return None

    def tensors(self, tensors, prepared):
        return tensors["qweight"], tensors["scales"], None
