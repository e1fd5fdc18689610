"""``LowbitHfQuantizer``: transformers' quantizer hooks, with lowbit doing the work.

- construct: the lowbit ``Quantizer`` of the config (a calibrated method quantizing on load is lowbit's error
  naming ``lowbit quantize --calib``); the transformers version is checked (``compat``).
- before weights (``_process_model_before_weight_loading``): lowbit's ``preprocess_model`` swaps its shells in
  on meta. Pre-quantized, transformers' loader then fills the shells' buffers by name (their meta dtypes keep the
  stored dtypes). Quantizing on load, the Linears stay until their weight arrives: ``param_needs_quantization``
  routes each such weight to ``LowbitQuantize``, which quantizes it with lowbit's ``quantize_weight`` (shape
  checked), swaps the shell in and loads it; nothing at full precision outlives its own layer.
- after weights: every stored tensor is checked against its format (``set_quant_tensor``), lowbit's
  ``postprocess_model`` ties and prepares the kernels, and the model is marked as lowbit's (``attach``), so
  ``model.save_pretrained`` writes a lowbit folder and ``lowbit.inspect`` works.
- ``model.dequantize()`` (``_dequantize``): dense modules with the decoded weights, the lowbit marks removed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.quantizers.base import HfQuantizer

from lowbit.errors import CheckpointError, ConfigError
from lowbit.hf.compat import check_version, conversion_op_base
from lowbit.hf.config import HfQuantConfig
from lowbit.loading.save import attach, detach
from lowbit.loading.stream import quantize_weight
from lowbit.nn.dense import dequantize_modules_
from lowbit.nn.holder import QuantHolder
from lowbit.registry import get
from lowbit.utils import release_freed_memory


class LowbitHfQuantizer(HfQuantizer):
    requires_calibration = False

    def __init__(self, quantization_config: HfQuantConfig, **kwargs: Any) -> None:
        check_version()
        super().__init__(quantization_config, **kwargs)
        cfg = quantization_config.lowbit
        self.lowbit = get(cfg.method).quantizer_cls(cfg, pre_quantized=self.pre_quantized)
        self.lowbit.layers.update(quantization_config.layers)
        self.pending: dict[str, QuantHolder] = {}  # quantizing on load: module name → shell waiting for its weight
        self.dtype: torch.dtype | None = None
        self.source: str | None = None

    # ---- environment, dtype, sizes ------------------------------------------------------------------
    def validate_environment(self, *args: Any, device_map: Any = None, **kwargs: Any) -> None:
        devices = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
        if "disk" in devices:
            raise ConfigError("device_map places modules on 'disk', which lowbit does not support; raise max_memory or "
                              "use a stronger quantization")
        gpus = [d for d in devices if d not in (None, "cpu", "auto", "balanced", "sequential")]
        wants_gpu = bool(gpus) or (device_map == "auto" and torch.cuda.is_available())
        self.lowbit.validate_environment(torch.device("cuda" if wants_gpu else "cpu"), None)

    def update_dtype(self, dtype: torch.dtype) -> torch.dtype:
        self.dtype = self.lowbit.update_dtype(dtype) or dtype
        return self.dtype

    def param_element_size(self, model: nn.Module, param_name: str, param: torch.Tensor) -> float:
        """Bytes per weight of a Linear quantized on load (its packed size), for ``device_map="auto"``."""
        name = param_name.rpartition(".")[0]
        if self.param_needs_quantization(model, param_name):
            return self.lowbit.packed_nbytes(name, tuple(param.shape)) / param.numel()
        return param.element_size()

    # ---- before weights -----------------------------------------------------------------------------
    def preprocess_model(self, model: nn.Module, dtype: torch.dtype | None = None, **kwargs: Any):
        self.dtype = dtype or self.dtype
        files = kwargs.get("checkpoint_files") or []
        self.source = str(Path(files[0]).parent) if files else None
        return super().preprocess_model(model, dtype=dtype, **kwargs)

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        originals = dict(model.named_modules())
        self.lowbit.preprocess_model(model)
        _untie_quantized_tables(model)
        if not self.pre_quantized:
            if self.lowbit.tables:
                raise ConfigError("quantize_embeddings / quantize_lm_head cannot quantize while transformers loads; "
                                  "quantize with lowbit.from_pretrained(path, quantization=...) or `lowbit quantize`, "
                                  "then load the folder with transformers")
            for name in self.lowbit.formats:  # the Linear stays until its weight arrives (LowbitQuantize)
                self.pending[name] = model.get_submodule(name)
                model.set_submodule(name, originals[name])
        return model

    def param_needs_quantization(self, model: nn.Module, param_name: str, **kwargs: Any) -> bool:
        name, _, attr = param_name.rpartition(".")
        return attr == "weight" and name in self.pending

    def get_quantize_ops(self):
        return _quantize_op_class()(self)

    # ---- after weights ------------------------------------------------------------------------------
    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        if self.pending:
            names = sorted(self.pending)
            raise CheckpointError(f"the checkpoint has no weight for {len(names)} layer(s) to quantize (first: "
                                  f"{names[0]}); expected a full-precision checkpoint of this architecture")
        for name in self.lowbit.formats:
            layer = model.get_submodule(name)
            if getattr(layer, "tied_to", None):
                continue  # shares the embedding's table, tied again below
            for attr in layer.tensor_names():
                tensor = layer._buffers[attr]
                if tensor is None or tensor.device.type == "meta":
                    raise CheckpointError(f"{name}.{attr} is missing from the checkpoint; expected every stored tensor "
                                          f"of {layer.fmt.describe()}; the folder is incomplete: copy or save it again")
                layer.set_quant_tensor(attr, tensor, name)  # shape and dtype against the format
        dtype = self.dtype or torch.float32
        self.lowbit.postprocess_model(model, _compute_device(model), dtype)
        attach(model, self.lowbit)
        model.config.quantization_config = self.quantization_config  # the same dict on saving, typed while loaded
        self.quantization_config.layers = dict(self.lowbit.layers)
        if self.source:
            model.lowbit_source = self.source
        return model

    # ---- capability ---------------------------------------------------------------------------------
    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return self.lowbit.is_serializable

    @property
    def is_trainable(self) -> bool:
        return self.lowbit.is_trainable

    def _dequantize(self, model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
        """``model.dequantize()``: every quantized module replaced by a dense one holding its decoded weight; the
        model is then an ordinary transformers model (``save_pretrained`` writes a dense checkpoint)."""
        dequantize_modules_(model, dtype)
        detach(model)
        return model


def _untie_quantized_tables(model: nn.Module) -> None:
    """Drop transformers' tied-weight entries whose modules are lowbit shells: a head sharing a quantized embedding
    table has no ``weight`` to tie (lowbit ties the table itself, in ``postprocess_model``)."""
    tied = getattr(model, "all_tied_weights_keys", None)
    if not isinstance(tied, dict):
        return
    for key, source in list(tied.items()):
        if any(isinstance(model.get_submodule(name.rpartition(".")[0]), QuantHolder) for name in (key, source)):
            del tied[key]


def _compute_device(model: nn.Module) -> torch.device:
    gpus = [b.device for b in model.buffers() if b.device.type == "cuda"]
    return gpus[0] if gpus else torch.device("cpu")


@functools.cache
def _quantize_op_class() -> type:
    class LowbitQuantize(conversion_op_base()):
        """One Linear's weight → lowbit's stored tensors in its shell, which replaces the Linear."""

        def __init__(self, hf_quantizer: LowbitHfQuantizer) -> None:
            self.hf_quantizer = hf_quantizer

        def convert(self, input_dict: dict, full_layer_name: str | None = None, model: nn.Module | None = None,
                    missing_keys: set | None = None, **kwargs: Any) -> dict:
            (value,) = input_dict.values()
            weight = value[0] if isinstance(value, list) else value
            name = full_layer_name.rpartition(".")[0]
            linear, shell = model.get_submodule(name), self.hf_quantizer.pending.pop(name)
            shell.load_quantized(quantize_weight(self.hf_quantizer.lowbit, shell, name, full_layer_name, weight), name)
            del weight, value, input_dict
            if getattr(linear, "bias", None) is not None and linear.bias.device.type != "meta":
                shell.bias = linear.bias  # loaded before the weight
            model.set_submodule(name, shell)
            if missing_keys is not None:
                missing_keys.discard(full_layer_name)
            release_freed_memory()
            return {}

    return LowbitQuantize
