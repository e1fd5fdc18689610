"""The base of the Triton kernels: the checks they share, the op call, and their column-major scales.

Importing this never imports triton: the kernels decline (with the reason) where triton or CUDA is missing,
and the op module that needs triton loads on the first layer prepared. Under Triton's interpreter
(``TRITON_INTERPRET=1``) they run on the CPU too, which is how they are tested without a GPU.
"""

from __future__ import annotations

import functools

import torch

from lowbit.kernels.base import Kernel
from lowbit.kernels.triton import env
from lowbit.kernels.triton.family import TritonFormat

HALF = (torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=1)
def load_ops():
    from lowbit.kernels.triton import ops  # registers lowbit::triton_linear (and imports triton on first launch)

    return ops


def by_columns(t: torch.Tensor) -> torch.Tensor:
    """[N, groups] stored column-major (the N rows of one group side by side): a kernel's load of one group for
    a block of rows is contiguous. Still indexed [row, group], so row slices (fused projections) stay views."""
    return t.t().contiguous().t() if t.dim() == 2 else t.contiguous()


class TritonKernel(Kernel):
    """Shared checks and the call; subclasses say which layers they take and how they lay them out."""

    priority = 20

    def triton_format(self, request) -> TritonFormat:
        """What the op is told about this layer's weights."""
        raise NotImplementedError

    def unsupported(self, request) -> str | None:
        """Why this kernel cannot run the layer's format (None: it can)."""
        return None

    def can_implement(self, request):
        if request.device.type != "cuda" and not env.interpreting():
            return False, f"device is {request.device.type}, this kernel runs on cuda"
        if not env.triton_available():
            return False, "triton is not installed; pip install triton"
        if request.compute_dtype not in HALF:
            return False, f"compute dtype {request.compute_dtype} is not bf16/fp16"
        if request.k % 128:
            return False, f"K={request.k} is not a multiple of 128"
        why = self.unsupported(request)
        if why:
            return False, why
        from lowbit.kernels.triton import tune

        tf = _triton_format(self, request)
        return True, f"triton {tf.label}: {tune.describe(tf, request.compute_dtype, request.k, request.n)}"

    def prepare(self, tensors, request):
        load_ops()  # the op exists before the first forward (which torch.compile may trace)
        prepared = self.layout(tensors, request)
        if env.triton_available() and request.device.type == "cuda":
            # fixed addresses, as parameters and buffers have: CUDA graphs that torch.compile records read the
            # weights in place (a tensor it does not know as static would be copied into the graph every replay)
            from torch._dynamo import mark_static_address

            for tensor in prepared.values():
                mark_static_address(tensor)
        return prepared

    def layout(self, tensors, request) -> dict[str, torch.Tensor]:
        """The kernel-private tensors (non-persistent, never saved)."""
        return {}

    def tensors(self, tensors, prepared):
        """(w, s, z) as the op takes them."""
        raise NotImplementedError

    def run(self, x, tensors, prepared, request, bias):
        w, s, z = self.tensors(tensors, prepared)
        if not torch.compiler.is_compiling() and type(x) is torch.Tensor and not (
                x.requires_grad and torch.is_grad_enabled()):
            # a plain eager call: straight to the launcher (the op's dispatch costs more than the launch)
            return load_ops().eager(x, w, s, z, bias, _cached_format(self, request))
        return torch.ops.lowbit.triton_linear(x, w, s, z, bias, *_op_args(self, request))


_FORMATS: dict[int, tuple] = {}


def _cached_format(kernel: TritonKernel, request) -> TritonFormat:
    """``_triton_format`` found by the request's identity, without hashing its fields on every call."""
    hit = _FORMATS.get(id(request))
    if hit is None or hit[0] is not request or hit[1] is not kernel:
        if len(_FORMATS) > 4096:
            _FORMATS.clear()
        hit = _FORMATS[id(request)] = (request, kernel, _triton_format(kernel, request))
    return hit[2]


@functools.lru_cache(maxsize=1024)
def _triton_format(kernel: TritonKernel, request) -> TritonFormat:
    return kernel.triton_format(request)


@functools.lru_cache(maxsize=1024)
def _op_args(kernel: TritonKernel, request) -> tuple[int, int, str, bool]:
    """The op's scalars for a layer, made once per (kernel, request): a forward only looks them up (torch.compile
    traces through the cache, with a warning that it does)."""
    return _triton_format(kernel, request).op_args()
