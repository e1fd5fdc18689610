"""QuantLinear: an ``nn.Linear`` whose weight is stored quantized; ``forward`` calls the chosen kernel."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.formats import WeightFormat
from lowbit.kernels import Kernel, KernelRequest, choose_for_layer
from lowbit.nn.holder import QuantHolder
from lowbit.nn.training import linear_with_grad, needs_grad


class QuantLinear(QuantHolder):
    """Drop-in for ``nn.Linear``. Canonical tensors (what is saved) are persistent buffers; the kernel's
    own layout is made by :meth:`prepare` after loading and again after ``.to(device)``.

    When the chosen kernel can rebuild the canonical tensors from its own layout, the canonical copy is
    dropped after :meth:`prepare`, so one copy of the weight is in memory; ``state_dict`` rebuilds it.

    ``compute_choice`` is the configured compute dtype (a dtype, or ``"auto"``); each :meth:`prepare` resolves it
    for the device the layer is on (``kernels.resolve_compute_dtype``) into ``compute_dtype``, so ``auto``
    follows the layer through ``.to()``. ``model_dtype`` (the dtype around the layer, for ``auto`` on GPUs)
    follows ``.half()`` and the like.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, fmt: WeightFormat,
                 device: torch.device | str | None = "meta", dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_quant(out_features, in_features, fmt, device)
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), requires_grad=False) if bias else None
        self.compute_choice: torch.dtype | str = torch.float32
        self.compute_dtype: torch.dtype = torch.float32  # compute_choice resolved at the last prepare
        self.model_dtype: torch.dtype = dtype if dtype is not None else torch.float32
        self.forced_kernel: str | None = None
        self.request: KernelRequest | None = None
        self.kernel: Kernel | None = None
        self.kernel_reason = ""
        self._prepared: dict[str, torch.Tensor] = {}
        self._dropped: set[str] = set()
        self.tied_to: str | None = None  # an embedding whose int8 table this layer shares (saved there)
        self.fused = None  # (FusedGroup, index) while fused with its siblings (nn/fuse.py)

    @classmethod
    def shell(cls, linear: nn.Linear, fmt: WeightFormat) -> QuantLinear:
        """An empty QuantLinear on the meta device with ``linear``'s shape."""
        dtype = linear.bias.dtype if linear.bias is not None else None
        return cls(linear.in_features, linear.out_features, linear.bias is not None, fmt, "meta", dtype)

    def extra_repr(self) -> str:
        kernel = self.kernel.name if self.kernel else "unprepared"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self.fmt.describe()}, kernel={kernel}")

    # ---- canonical tensors ------------------------------------------------------------------
    def canonical_tensors(self) -> dict[str, torch.Tensor]:
        rebuilt = self.kernel.canonical_from_prepared(self._prepared, self.request) if self._dropped else {}
        return {n: rebuilt[n] if n in self._dropped else self._buffers[n] for n in self.tensor_names()}  # layout order

    def __getattr__(self, name: str):
        # a canonical tensor the kernel's layout holds (dropped after prepare) reads as rebuilt, never as None
        value = super().__getattr__(name)
        if value is None and name in self.__dict__.get("_dropped", ()):
            return self.canonical_tensors()[name]
        return value

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The [out, in] weight the stored tensors represent, as a new tensor (default: the model's dtype)."""
        return self.fmt.decode(self.canonical_tensors(), dtype or self.model_dtype)

    def on_tensors_changed(self) -> None:
        self.request, self.kernel, self._prepared, self._dropped, self.fused = None, None, {}, set(), None

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()
        if self.tied_to is None:
            for name, tensor in self.canonical_tensors().items():
                destination[prefix + name] = tensor

    # ---- kernels -------------------------------------------------------------------------------
    def prepare(self, compute_dtype: torch.dtype | str | None = None, forced_kernel: str | None = None,
                model_dtype: torch.dtype | None = None) -> None:
        """Resolve the compute dtype for this device, choose the kernel and build its layout.

        ``compute_dtype``: a dtype or ``"auto"`` (kept as ``compute_choice``); None keeps the current choice.
        """
        if compute_dtype is not None:
            self.compute_choice = compute_dtype
        if forced_kernel is not None:
            self.forced_kernel = forced_kernel
        if model_dtype is not None:
            self.model_dtype = model_dtype
        canon = self.canonical_tensors()
        request, kernel, reason = choose_for_layer(self.fmt, self.weight_shape, canon, self.compute_choice,
                                                   self.model_dtype, self.forced_kernel)
        self.compute_dtype = request.compute_dtype
        prepared = kernel.prepare(canon, request)
        for name, tensor in canon.items():
            self._buffers[name] = tensor
        self.request, self.kernel, self.kernel_reason = request, kernel, reason
        self._prepared, self._dropped = prepared, set()
        if self.tied_to is None:  # the kernel layout holds these; state_dict rebuilds them
            for name in kernel.dropped_names(request):
                if name in canon:
                    self._buffers[name] = None
                    self._dropped.add(name)

    def after_move(self, fn, target: torch.device) -> None:
        self.model_dtype = fn(torch.empty(0, dtype=self.model_dtype)).dtype
        was_prepared = self.kernel is not None
        self.on_tensors_changed()
        if was_prepared and target.type != "meta":
            self.prepare()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if needs_grad(self, x):  # training: backward through the dequantized weight (nn/training.py)
            return linear_with_grad(self, x)
        return self.run_kernel(x)

    def run_kernel(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            group, index = self.fused
            return group.output(x, index)
        if self.kernel is None:
            self.prepare()
        xc = x if x.dtype == self.compute_dtype else x.to(self.compute_dtype)  # a no-op .to() still dispatches
        y = self.kernel.run(xc, self._buffers, self._prepared, self.request, self.bias)
        return y if y.dtype == x.dtype else y.to(x.dtype)
