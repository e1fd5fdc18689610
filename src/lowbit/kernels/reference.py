"""Reference kernel: dequantize in pure torch, then ``F.linear``. Always correct; the oracle for the others."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.formats import IntSpec, dequantize
from lowbit.kernels.base import Kernel, fake_linear


@torch.library.custom_op("lowbit::int_linear_ref", mutates_args=())
def int_linear_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                   bits: int, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ dequant(W).T + bias``; the group size is K / scales.shape[1], symmetric when ``zeros`` is None."""
    spec = IntSpec(bits=bits, group_size=None, symmetric=zeros is None)
    tensors = {"qweight": qweight, "scales": scales}
    if zeros is not None:
        tensors["zeros"] = zeros
    w = dequantize(tensors, spec, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


@int_linear_ref.register_fake
def _(x, qweight, scales, zeros, bits, bias):
    return fake_linear(x, qweight.shape[0])


class ReferenceKernel(Kernel):
    name = "reference"
    priority = 0

    def can_implement(self, spec, device, shape, compute_dtype):
        return True, "pure-torch dequantize + F.linear (works everywhere)"

    def run(self, x, tensors, prepared, spec, bias):
        return torch.ops.lowbit.int_linear_ref(x, tensors["qweight"], tensors["scales"], tensors.get("zeros"),
                                               spec.bits, bias)
