"""The one plan of what goes where: each checkpoint tensor's place in the model, and the output's tensors in order.

``Plan.route(key)`` says what loading does with a checkpoint tensor (``tensors.route``: quantize, stored part,
param, buffer, skip, unexpected). ``Plan(..., output=True)`` also lists what writing the quantized model emits,
in the order saving the loaded model writes it (``save._tensors``: module by module, a tied tensor once), and
fails, before any work, on a missing or unexpected checkpoint tensor.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lowbit.loading.checkpoint import Checkpoint
from lowbit.loading.tensors import ignore_patterns, key_mapper, missing_error, route, unexpected_error
from lowbit.nn.holder import QuantHolder
from lowbit.quantizer import Quantizer


@dataclasses.dataclass
class Step:
    """Where checkpoint tensor ``key`` goes: attribute ``attr`` of ``module`` (``module_name``), as ``kind``."""

    key: str
    name: str  # the model's name of the tensor
    module_name: str
    attr: str
    module: nn.Module | None
    kind: str


@dataclasses.dataclass
class Item:
    """One step of the output: a tensor ``name`` (from checkpoint ``key``, or the skeleton's own ``old`` buffer when
    there is none), or, with ``layer`` set, the stored tensors of quantized layer ``name`` from its weight ``key``."""

    name: str
    key: str | None
    old: torch.Tensor | None = None
    layer: QuantHolder | None = None

    def names(self) -> list[str]:
        """The output names this item writes, in order (a layer's stored tensors in layout order)."""
        if self.layer is None:
            return [self.name]
        return [f"{self.name}.{attr}" for attr in self.layer.tensor_names()]


class Plan:
    """Checkpoint keys ↔ model names for ``model`` (its skeleton, after ``preprocess_model``)."""

    def __init__(self, model: nn.Module, ckpt: Checkpoint, quantizer: Quantizer | None, *,
                 output: bool = False) -> None:
        self.model, self.ckpt, self.quantizer = model, ckpt, quantizer
        self.to_model = key_mapper(model, list(ckpt.weight_map))
        self.modules = dict(model.named_modules())
        self.ignore = ignore_patterns(model)
        self.source = {self.to_model(k): k for k in ckpt.weight_map}  # model name → checkpoint key
        self.items: list[Item] = []
        self.rest: list[str] = []  # checkpoint keys not written (tied duplicates, rebuilt or ignored buffers)
        if output:
            self._plan_output()

    def route(self, key: str) -> Step:
        name = self.to_model(key)
        module_name, _, attr = name.rpartition(".")
        module = self.modules.get(module_name)
        return Step(key, name, module_name, attr, module, route(module, attr, key, self.quantizer, self.ignore))

    def _plan_output(self) -> None:
        items, missing, seen, taken = [], [], set(), set()
        for prefix, module in self.model.named_modules():
            local: dict[str, torch.Tensor] = {}
            module._save_to_state_dict(local, f"{prefix}." if prefix else "", True)
            stored = set(module.tensor_names()) if isinstance(module, QuantHolder) else set()
            for name, old in local.items():
                if old is None or id(old) in seen:
                    continue  # a tied tensor is written once, under its first name
                seen.add(id(old))
                layer = None
                if (name[len(prefix) + 1:] if prefix else name) in stored:
                    if module in taken:
                        continue  # all the layer's stored tensors come from quantizing its weight, at once
                    taken.add(module)
                    name, old, layer = f"{prefix}.weight", None, module
                key = self.source.get(name)
                if key is None and (layer is not None or old.device.type == "meta"):
                    missing.append(name)
                items.append(Item(prefix if layer is not None else name, key, old, layer))
        used = {item.key for item in items}
        rest = [k for k in self.ckpt.weight_map if k not in used]
        unexpected = [k for k in rest if self.route(k).kind == "unexpected"]
        if unexpected:
            raise unexpected_error(self.ckpt, self.model, unexpected)
        if missing:
            raise missing_error(self.ckpt, missing)
        self.items, self.rest = items, rest
