"""The interface a calibrated method implements: quantize one block from what it receives on calibration text."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from lowbit.calibration.inputs import BlockInputs, Reference
from lowbit.formats import WeightFormat
from lowbit.quantizer import Quantizer

Stored = dict[str, dict[str, torch.Tensor]]  # module name → its stored tensors


class CalibratedQuantizer(Quantizer):
    """Base of GPTQ, AWQ and SmoothQuant: ``lowbit.quantize_calibrated`` (``lowbit quantize --calib``) calls
    :meth:`calibrate_block` once per transformer block, in order, each block seeing the outputs of the
    already-quantized blocks before it. Linears outside the blocks (a BERT pooler, say) are rounded to nearest
    in the same format by :meth:`Quantizer.quantize` (the format's own encoding)."""

    requires_calibration: ClassVar[bool] = True

    @property
    def wants_reference(self) -> bool:
        """Whether :meth:`calibrate_block` needs the full-precision model's view of each block (``reference``):
        the runner then also carries the full-precision blocks' outputs, which doubles the inputs it holds."""
        return False

    def calibrate_block(self, block: nn.Module, prefix: str, inputs: BlockInputs,
                        reference: Reference | None = None) -> Stored:
        """Quantize the block's Linears that ``self.formats`` names (``prefix`` + "." + name within the block).
        ``reference`` is given when :attr:`wants_reference` says so.

        Returns their stored tensors, and leaves ``block`` computing what the quantized model will compute:
        every quantized Linear's weight replaced by its dequantized value (see :func:`use_dequantized`), and
        any scales the method moved applied to the block's other modules, whose tensors are saved as they are.
        """
        raise NotImplementedError

    def block_linears(self, block: nn.Module, prefix: str) -> dict[str, nn.Linear]:
        """The block's Linears that are quantized, by their names in the model."""
        out = {}
        for name, module in block.named_modules():
            full = f"{prefix}.{name}" if name else prefix
            if isinstance(module, nn.Linear) and full in self.formats and full not in self.tables:
                out[full] = module
        return out


def use_dequantized(linear: nn.Linear, fmt: WeightFormat, stored: dict[str, torch.Tensor]) -> None:
    """Make ``linear`` compute with the quantized weight (its dequantized value, in the layer's dtype)."""
    w = fmt.decode({k: v.to(linear.weight.device) for k, v in stored.items()}, torch.float32)
    linear.weight.data.copy_(w.to(linear.weight.dtype))
