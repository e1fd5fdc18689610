"""Reference kernel: the format's own pure-torch ``reference_linear``. Always correct; the oracle for the others.

One op serves every format: the format travels as its JSON key (``WeightFormat.key``, read back whole by
``format_from_key``) and the stored tensors as a list in the format's storage order.
"""

from __future__ import annotations

import functools

import torch

from lowbit.formats import WeightFormat, format_from_key
from lowbit.kernels.base import Kernel, fake_linear


@torch.library.custom_op("lowbit::linear_ref", mutates_args=())
def linear_ref(x: torch.Tensor, tensors: list[torch.Tensor], key: str, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` where W is what ``tensors`` store in the format ``key`` (a WeightFormat key)."""
    fmt = format_from_key(key)
    return fmt.reference_linear(x, dict(zip(fmt.tensor_names(), tensors)), bias)


@linear_ref.register_fake
def _(x, tensors, key, bias):
    return fake_linear(x, tensors[0].shape[0])


@functools.lru_cache(maxsize=256)
def _names_and_key(fmt: WeightFormat) -> tuple[list[str], str]:
    return fmt.tensor_names(), fmt.key()


class ReferenceKernel(Kernel):
    name = "reference"
    priority = 0

    def can_implement(self, request):
        return True, "pure-torch dequantize + F.linear (works everywhere)"

    def run(self, x, tensors, prepared, request, bias):
        names, key = _names_and_key(request.fmt)
        return torch.ops.lowbit.linear_ref(x, [tensors[n] for n in names], key, bias)
