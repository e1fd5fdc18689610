"""Adding a kernel, worked through: the class below and its conformance subclass are all it takes.

A kernel shipped with lowbit takes three files: its module (a ``Kernel`` subclass with a ``name``: defining it
registers it), its test (a ``KernelConformance`` subclass naming the formats it takes) and one import line (in
``lowbit/kernels/__init__.py``, or its family's package such as ``lowbit/kernels/triton/__init__.py``) so the
module is loaded with lowbit. Here the module and the test are this one file.
"""

import torch
import torch.nn.functional as F
from kernel_conformance import FORMATS, KernelConformance

from lowbit.kernels import Activations, Kernel, kernel_names


class DenseKernel(Kernel):
    """Dequantizes once at prepare, then ``F.linear`` in the compute dtype: any weight-only format, any device."""

    name = "example_dense"
    priority = -10  # below the reference: chosen only by name (kernel="example_dense")

    def can_implement(self, request):
        if request.activations is not Activations.NONE:
            return False, "the activations are quantized at run time; this kernel uses them as they are"
        return True, "dequantized at prepare, then F.linear"

    def prepare(self, tensors, request):
        return {"w": request.fmt.decode(tensors, request.compute_dtype)}

    def run(self, x, tensors, prepared, request, bias):
        return F.linear(x, prepared["w"], None if bias is None else bias.to(x.dtype))


class TestDenseKernel(KernelConformance):
    kernel = "example_dense"
    accepts = set(FORMATS) - {"fp8-channel-dynamic", "w8a8"}
    computes = (torch.float32,)


def test_defining_the_class_registered_it():
    assert "example_dense" in kernel_names()
