"""Shared bookkeeping of modules that store a quantized weight as canonical buffers."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import FormatError
from lowbit.formats import WeightFormat


class QuantHolder(nn.Module):
    """Registers the canonical tensors of ``fmt`` for an [n, k] weight as persistent buffers."""

    def _init_quant(self, n: int, k: int, fmt: WeightFormat, device: torch.device | str | None) -> None:
        self.fmt = fmt
        self.weight_shape = (n, k)
        self._layout = fmt.expected_tensors(n, k)
        for name, (shape, dtype) in self._layout.items():
            self.register_buffer(name, torch.empty(shape, dtype=dtype, device=device))

    def tensor_names(self) -> list[str]:
        return list(self._layout)

    def load_quantized(self, tensors: dict[str, torch.Tensor], where: str = "") -> None:
        """Take the stored tensors of this layer; shapes and dtypes must match the layout exactly."""
        names = set(self._layout)
        if set(tensors) != names:
            missing, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
            raise FormatError(f"{where or type(self).__name__}: tensors {sorted(tensors)} do not match "
                              f"{self.fmt.describe()} (missing {missing}, unexpected {extra}); re-quantize the checkpoint")
        for name, tensor in tensors.items():
            self.set_quant_tensor(name, tensor, where)

    def set_quant_tensor(self, name: str, tensor: torch.Tensor, where: str = "") -> None:
        shape, dtype = self._layout[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise FormatError(f"{where}.{name} has shape {list(tensor.shape)} {tensor.dtype}; expected {list(shape)} "
                              f"{dtype} for {self.fmt.describe()} of a {list(self.weight_shape)} weight; "
                              "the checkpoint does not match its quantization_config")
        if tensor.data_ptr() % 64:
            # safetensors hands out tensors at 8-byte offsets; torch's int8/int4 CPU kernels read
            # with aligned vector loads and crash on them, so own an aligned copy.
            tensor = tensor.clone()
        self._buffers[name] = tensor
        self.on_tensors_changed()

    def canonical_tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors of this layer (what is saved)."""
        return {n: self._buffers[n] for n in self.tensor_names()}

    def _apply(self, fn, recurse=True):
        # Canonical tensors move by device only: their dtypes are part of the format, so .half() or
        # .to(torch.bfloat16) on the model must not touch them.
        canon = self.canonical_tensors()
        target = fn(torch.empty(0, device=canon["qweight"].device)).device
        for name in self.tensor_names():
            self._buffers[name] = None
        super()._apply(fn, recurse)
        for name, tensor in canon.items():
            self._buffers[name] = tensor.to(target)
        self.after_move(fn, target)
        return self

    def after_move(self, fn, target: torch.device) -> None:
        """Hook run after ``.to()`` / ``.cuda()`` / ``.half()`` moved this module."""

    def on_tensors_changed(self) -> None:
        """Hook: kernel layouts built from the canonical tensors are stale."""

    def packed_nbytes(self) -> int:
        return sum(torch.Size(s).numel() * d.itemsize for s, d in self._layout.values())

    def bits_per_weight(self) -> float:
        return self.fmt.bits_per_weight(*self.weight_shape)
