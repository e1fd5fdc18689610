"""Training through quantized layers: which formats have a backward, and the autograd function every kernel shares.

A quantized weight is frozen (its stored tensors are integer or fp8 buffers, never parameters). Gradients still
flow to the layer's input, which is what LoRA adapters and anything trainable before the layer need:
``dL/dx = dL/dy @ W`` with W the weight the stored tensors represent. :class:`QuantLinearGrad` runs the layer's
kernel forward (whichever it is: the reference op, the CPU built-ins, a Triton kernel) and, in backward,
dequantizes the weight (``QuantLinear.dequantize``), multiplies and drops it: no dense copy of the weight is kept
between forward and backward, and nothing of the input is saved. The layers these functions take are
:class:`lowbit.nn.QuantLinear` (typed as ``nn.Module`` here: quant_linear.py imports this module).

A format trains when its layer is linear in its input: every weight-only format (integer grids of RTN, HQQ, GPTQ
and AWQ, nf4, fp4, mxfp4, fp8). Formats that quantize the activations at run time (W8A8: SmoothQuant, fp8 with
``activations="dynamic"``) have no gradient through that rounding; a layer of theirs that must pass a gradient
raises :class:`~lowbit.errors.TrainingError` naming the formats that can.
"""

from __future__ import annotations

import functools

import torch

from lowbit.errors import TrainingError
from lowbit.formats import WeightFormat
from lowbit.kernels import Activations, kernel_request

TRAINABLE_FORMATS = ("int2-int8 (rtn, int8, int4, hqq, gptq, awq)", "nf4", "fp4", "mxfp4", "fp8 (weight-only)")
UNTRAINABLE_FORMATS = ("w8a8 (smoothquant)", "fp8 with activations='dynamic'")


def trainable_formats() -> tuple[str, ...]:
    """The formats whose layers pass gradients (LoRA on them, or anything trainable before them)."""
    return TRAINABLE_FORMATS


@functools.lru_cache(maxsize=256)
def format_trains(fmt: WeightFormat) -> bool:
    """Whether a layer stored as ``fmt`` has a backward: its activations are used as they are (weight-only)."""
    return kernel_request(fmt, (1, 1), "cpu", torch.float32).activations is Activations.NONE


def check_trains(fmt: WeightFormat, where: str) -> None:
    """Raise TrainingError if a layer of ``fmt`` (named ``where``) cannot pass a gradient."""
    if not format_trains(fmt):
        raise TrainingError(f"{where} is stored as {fmt.describe()}, which quantizes activations at run time and has "
                            f"no backward; expected one of the formats that train: {', '.join(TRAINABLE_FORMATS)}; "
                            "quantize the base with one of those (e.g. int4 or nf4) to train through it")


def needs_grad(layer: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether this call must record a backward (autograd on, and the input or the bias asks for a gradient)."""
    bias = layer.bias
    return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


class QuantLinearGrad(torch.autograd.Function):
    """``y = layer(x)`` through the layer's kernel; backward ``dx = dy @ W`` with W dequantized in backward only."""

    @staticmethod
    def forward(x: torch.Tensor, bias: torch.Tensor | None, layer: torch.nn.Module) -> torch.Tensor:
        return layer.run_kernel(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.layer = inputs[2]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layer = ctx.layer
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ layer.dequantize(grad.dtype)  # [..., N] @ [N, K]; the dense W dies here
        if ctx.needs_input_grad[1]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(layer.bias.dtype)
        return grad_x, grad_bias, None


def linear_with_grad(layer: torch.nn.Module, x: torch.Tensor, where: str | None = None) -> torch.Tensor:
    """The layer's output with a backward; a format without one is a TrainingError naming the layer."""
    check_trains(layer.fmt, where or f"a QuantLinear {list(layer.weight_shape)}")
    return QuantLinearGrad.apply(x, layer.bias, layer)
