"""LoRA on lowbit's ``QuantLinear`` through PEFT (QLoRA-style: the quantized base frozen, the adapters trained).

PEFT picks a LoRA layer per target through dispatchers; layers it does not know are registered per
``LoraConfig`` (``config._register_custom_module``, PEFT's hook for custom layers). :func:`register` does that
for ``QuantLinear``, and, given the model, resolves ``target_modules="all-linear"`` to the quantized Linears too
(PEFT's own resolution only sees ``nn.Linear``) and checks every target before any layer is replaced: a target
that is not a Linear, or whose format has no backward, is a one-line :class:`~lowbit.errors.TrainingError`.
:func:`get_peft_model` is ``peft.get_peft_model`` after :func:`register`.

:class:`QuantLoraLinear` is PEFT's own ``lora.Linear`` (forward, dropout, scaling, several adapters, mixed
batches, saving) over a ``QuantLinear`` base, whose forward has a backward through the dequantized weight
(``lowbit.nn.training``). Merging replaces the base by a dense ``nn.Linear`` holding the dequantized weight plus
each adapter's delta, so ``merge_and_unload()`` gives dense layers; unmerging restores the quantized base exactly.
"""

from __future__ import annotations

from pathlib import Path

import importlib.util

import torch
from torch import nn

from lowbit.errors import DependencyError, TrainingError

if importlib.util.find_spec("peft") is None:
    raise DependencyError("lowbit's LoRA support needs peft, which is not installed; pip install 'lowbit[train]'")

from peft import LoraConfig  # noqa: E402
from peft.tuners.lora.layer import Linear as PeftLoraLinear  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge, check_target_module_exists  # noqa: E402

from lowbit.nn import QuantLinear  # noqa: E402
from lowbit.nn.dense import dense_linear  # noqa: E402
from lowbit.nn.holder import QuantHolder  # noqa: E402
from lowbit.nn.training import check_trains  # noqa: E402

PLAIN_INITS = (True, False, "gaussian")  # LoRA initializations that do not read the dense base weight
ALL_LINEAR = "all-linear"


class QuantLoraLinear(PeftLoraLinear):
    """LoRA adapters beside a frozen ``QuantLinear``: ``y = base(x) + B(A(dropout(x))) * scaling``."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs) -> None:
        base = base_layer.get_base_layer() if isinstance(base_layer, BaseTunerLayer) else base_layer
        where = kwargs.get("target_name") or "a QuantLinear"
        check_trains(base.fmt, where)
        if config.init_lora_weights not in PLAIN_INITS:
            raise TrainingError(f"init_lora_weights={config.init_lora_weights!r} reads the dense base weight, which "
                                f"{where} stores quantized; expected one of {list(PLAIN_INITS)}")
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
        self._quantized: list[QuantLinear] = []  # the quantized base while merged (a list: not a submodule)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features  # a QuantLinear is no nn.Linear, PEFT's lookup misses it

    @property
    def lora_variants(self):
        return {(): None}  # plain LoRA: DoRA and the other variants read the dense base weight

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs):
        try:
            return super().resolve_lora_variant(config=config, **kwargs)
        except ValueError as e:
            raise TrainingError(f"{e} on a lowbit QuantLinear; expected plain LoRA (use_dora=False and no other "
                                "variant); merge into a dense model first to train a variant") from None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # an adapter trained on another base: one line naming the tensor, before torch lists every mismatch
        own = dict(self.named_parameters())
        for key, tensor in state_dict.items():
            part = key[len(prefix):] if key.startswith(prefix + "lora_") else None
            if part in own and tuple(tensor.shape) != tuple(own[part].shape):
                raise TrainingError(f"adapter tensor {key} has shape {list(tensor.shape)}; expected "
                                    f"{list(own[part].shape)} for {prefix.rstrip('.')} ({self.in_features} inputs, "
                                    f"{self.out_features} outputs, r={self.r.get(part.split('.')[1])}): the adapter "
                                    "was trained on another base model; load it onto the base it was trained on")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        base = self.get_base_layer()
        if isinstance(base, QuantLinear):
            dense = dense_linear(base)
        else:  # already merged once: the dense layer takes more adapters
            dense = base
        weight = dense.weight.data.clone() if safe_merge else dense.weight.data
        bias = None if dense.bias is None else (dense.bias.data.clone() if safe_merge else dense.bias.data)
        for name in adapter_names:
            if name not in self.lora_A:
                continue
            weight += self.get_delta_weight(name).to(weight.dtype)
            if self.lora_bias[name]:
                if bias is None:
                    raise TrainingError(f"adapter {name!r} has lora_bias=True but the base layer has no bias; "
                                        "expected lora_bias=False for a layer without bias")
                bias += (self.lora_B[name].bias * self.scaling[name]).to(bias.dtype)
            if safe_merge and not torch.isfinite(weight).all():
                raise TrainingError(f"merging adapter {name!r} gives NaN/Inf weights; expected finite adapter "
                                    "weights: the adapter is broken (retrain it, e.g. with a lower learning rate)")
            self.merged_adapters.append(name)
        dense.weight.data, dense.bias = weight, (None if bias is None else nn.Parameter(bias, requires_grad=False))
        if isinstance(base, QuantLinear):
            self._quantized.append(base)
            self.base_layer = dense

    def unmerge(self) -> None:
        if not self.merged:
            return
        self.merged_adapters.clear()
        dense = self.get_base_layer()
        self.base_layer = self._quantized.pop().to(dense.weight.device)  # exactly the quantized base of before


def linear_names(model: nn.Module) -> set[str]:
    """What ``"all-linear"`` means on a lowbit model: every Linear, quantized or not, except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inside = {f"{prefix}.{suffix}" for prefix, m in model.named_modules() if isinstance(m, BaseTunerLayer)
              for suffix, _ in m.named_modules() if suffix}
    return {name for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, QuantLinear)) and m is not head and name not in inside}


def check_targets(config: LoraConfig, model: nn.Module) -> list[str]:
    """The names ``config`` targets in ``model``; a target that is not a Linear, or cannot train, is an error."""
    found = []
    for name, module in model.named_modules():
        if not name or not check_target_module_exists(config, name):
            continue
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        if isinstance(base, QuantLinear):
            check_trains(base.fmt, name)
        elif not isinstance(base, nn.Linear):
            kind = f"a quantized {type(base).__name__}" if isinstance(base, QuantHolder) else type(base).__name__
            raise TrainingError(f"LoRA target {name!r} is {kind}, not a Linear; expected target_modules naming "
                                f"Linear layers (e.g. q_proj, v_proj) or {ALL_LINEAR!r}; drop it from target_modules")
        found.append(name)
    return found


def register(config: LoraConfig, model: nn.Module | None = None) -> LoraConfig:
    """Let ``config`` put :class:`QuantLoraLinear` on lowbit's quantized Linears (returns ``config``).

    With ``model``: ``target_modules="all-linear"`` becomes the model's Linears, quantized ones included, and every
    target is checked (a Linear, in a format that trains) before PEFT replaces anything."""
    if not isinstance(config, LoraConfig):
        raise TrainingError(f"config is a {type(config).__name__}; expected a peft.LoraConfig (LoRA is the adapter "
                            "lowbit's quantized layers take)")
    config._register_custom_module({QuantLinear: QuantLoraLinear})
    if model is not None:
        if isinstance(config.target_modules, str) and config.target_modules.lower() == ALL_LINEAR:
            config.target_modules = linear_names(model)
        check_targets(config, model)
    return config


def load_adapter(model: nn.Module, adapter: str | Path, **kwargs):
    """``peft.PeftModel.from_pretrained`` for a lowbit model: the adapter's LoRA config registered and checked."""
    from peft import PeftConfig, PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise TrainingError(f"adapter {str(adapter)!r} has no adapter_config.json; expected a folder written by "
                            "PeftModel.save_pretrained; pass the adapter's folder")
    config = PeftConfig.from_pretrained(str(adapter))
    return PeftModel.from_pretrained(model, str(adapter), config=register(config, model), **kwargs)


def get_peft_model(model: nn.Module, config: LoraConfig, **kwargs):
    """``peft.get_peft_model`` for a lowbit model: :func:`register` first, then PEFT as usual."""
    import peft

    return peft.get_peft_model(model, register(config, model), **kwargs)
