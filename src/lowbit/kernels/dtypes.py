"""The compute dtype of a quantized layer: a configured dtype, or ``auto`` resolved for the device at prepare."""

from __future__ import annotations

import torch

from lowbit.kernels.cpu import features

AUTO = "auto"  # resolved per device each time a layer is prepared (after loading, and again after .to())


def resolve_compute_dtype(choice: torch.dtype | str, device: torch.device, model_dtype: torch.dtype) -> torch.dtype:
    """``choice`` if it is a dtype; ``auto``: on CPUs bf16 where the CPU has bf16 units (else fp32, which the CPU
    kernels run faster there), elsewhere the model's half dtype (bf16 for an fp32 model)."""
    if choice != AUTO:
        return choice
    if device.type == "cpu":
        return torch.bfloat16 if features.cpu_has_bf16() else torch.float32
    return torch.bfloat16 if model_dtype == torch.float32 else model_dtype
