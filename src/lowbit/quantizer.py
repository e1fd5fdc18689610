"""Quantizer: the lifecycle every method implements (transformers' HfQuantizer contract, kept small).

construct → validate_environment → update_dtype / update_device_map / adjust_max_memory →
preprocess_model (swap shells on meta) → per tensor: should_quantize / quantize, or expected_keys when
pre-quantized → postprocess_model (kernels, ties). See ARCHITECTURE.md §2.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from lowbit.archs import arch_info, name_matches
from lowbit.config import ComputeDtype, QuantConfig
from lowbit.errors import ConfigError, DependencyError
from lowbit.formats import WeightFormat
from lowbit.kernels import AUTO
from lowbit.nn import QuantEmbedding, QuantLinear
from lowbit.nn.quant_embedding import EMBEDDING_FORMAT
from lowbit.nn.training import format_trains
from lowbit.utils import release_freed_memory


class Quantizer:
    """Base of every method. Subclasses set ``config_cls`` and implement ``weight_format``; the default ``quantize``
    is the format's own round-to-nearest encoding, which methods with their own grid override."""

    config_cls: ClassVar[type[QuantConfig]] = QuantConfig
    requires_calibration: ClassVar[bool] = False
    # stored values come from lowbit's own encoders (scales positive); layouts imported from other tools may not
    own_values: ClassVar[bool] = True
    required_packages: ClassVar[tuple[tuple[str, str], ...]] = ()  # (import name, pip requirement)

    def __init__(self, config: QuantConfig, *, pre_quantized: bool = False, skip: tuple[str, ...] = (),
                 calibrated: bool = False) -> None:
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"{type(self).__name__} got a {type(config).__name__}; expected {self.config_cls.__name__}")
        if self.requires_calibration and not (pre_quantized or calibrated):  # `calibrated`: the runner feeds data
            raise ConfigError(f"method {config.method!r} needs calibration data and cannot quantize while loading; run "
                              f"`lowbit quantize SRC OUT --method {config.method} --calib TEXT` and load OUT instead")
        self.config = config
        self.pre_quantized = pre_quantized
        self.skip = tuple(config.modules_to_not_convert) + tuple(skip)
        self.layers: dict[str, dict[str, Any]] = {}  # per-layer deviations (group-size fallback), saved in config
        self.formats: dict[str, WeightFormat] = {}  # module name → what it stores
        self.tables: set[str] = set()  # embeddings and lm_head, quantized to int8 when asked
        self.tied_head: tuple[str, str] | None = None
        self.embedding_names: tuple[str | None, str | None] = (None, None)  # (input table, output head), set below
        self.model_type: str | None = None  # set by preprocess_model; keys the architecture data
        self._warned_fallback = False

    # ---- capability -----------------------------------------------------------------------------
    @property
    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        """Whether the layers it makes pass gradients (LoRA trains on them): every format it gives has a backward
        (``lowbit.nn.training``); before ``preprocess_model``, the format it gives a 4096 x 4096 probe Linear."""
        formats = list(self.formats.values())
        if not formats:
            formats = [self.weight_format("probe", nn.Linear(4096, 4096, bias=False, device="meta"))]
        return all(format_trains(f) for f in formats)

    # ---- environment, dtype, placement ----------------------------------------------------------
    def validate_environment(self, device: torch.device, dtype: torch.dtype | None) -> None:
        for module, requirement in self.required_packages:
            if importlib.util.find_spec(module) is None:
                raise DependencyError(f"method {self.config.method!r} needs the package {module!r}, which is not "
                                      f"installed; run: pip install '{requirement}'")

    def update_dtype(self, dtype: torch.dtype | None) -> torch.dtype | None:
        return dtype

    def update_device_map(self, device_map: Any) -> Any:
        return device_map

    def adjust_max_memory(self, max_memory: dict | None) -> dict | None:
        return max_memory

    def compute_dtype(self) -> torch.dtype | str:
        """The activations' dtype inside quantized layers as configured: a dtype, or ``"auto"``, which each layer
        resolves for its own device whenever it is prepared (``kernels.resolve_compute_dtype``)."""
        choice = self.config.compute_dtype
        return AUTO if choice is ComputeDtype.AUTO else getattr(torch, choice.value)

    # ---- memory math ------------------------------------------------------------------------------
    def packed_nbytes(self, name: str, shape: tuple[int, int]) -> int:
        fmt = self.formats.get(name)
        if fmt is None:
            raise ConfigError(f"packed_nbytes({name!r}): no quantized layer has that name; expected one of the "
                              f"{len(self.formats)} names in Quantizer.formats (call preprocess_model first)")
        return round(fmt.bits_per_weight(*shape) * shape[0] * shape[1] / 8)

    def kept_dtype(self, name: str, dtype: torch.dtype) -> torch.dtype:
        return dtype

    # ---- before weights ---------------------------------------------------------------------------
    def weight_format(self, name: str, module: nn.Linear) -> WeightFormat:
        raise NotImplementedError

    def should_quantize(self, name: str, module: nn.Module) -> bool:
        """Whether a Linear converts: not in the skip list nor the architecture's skip data."""
        patterns = self.skip + arch_info(self.model_type).skip
        return not any(name_matches(name, p) for p in patterns)

    def preprocess_model(self, model: nn.Module) -> None:
        """Swap eligible ``nn.Linear`` (and, if asked, the embeddings) for quantized shells on meta."""
        hf_config = getattr(model, "config", None)
        self.model_type = getattr(hf_config, "model_type", None)
        cfg = self.config
        in_emb, out_emb = _embeddings(model)
        tied = bool(getattr(hf_config, "tie_word_embeddings", False)) and in_emb is not None and out_emb is not None
        head_names = {n for n, m in model.named_modules() if m is out_emb}
        emb_names = {n for n, m in model.named_modules() if m is in_emb}
        self.embedding_names = (next(iter(emb_names), None), next(iter(head_names), None))
        quant_head = cfg.quantize_lm_head or (tied and cfg.quantize_embeddings)
        quant_emb = cfg.quantize_embeddings or (tied and cfg.quantize_lm_head)
        if tied and cfg.quantize_embeddings != cfg.quantize_lm_head and not self.pre_quantized:
            warnings.warn("input and output embeddings are tied: both are quantized to int8 as one table", stacklevel=3)
        for name, module in list(model.named_modules()):
            if name in emb_names and quant_emb:
                dtype = module.weight.dtype
                _set_module(model, name, QuantEmbedding.shell(module, dtype))
                self.formats[name] = EMBEDDING_FORMAT
                self.tables.add(name)
            elif isinstance(module, nn.Linear):
                if name in head_names:
                    if not quant_head:
                        continue
                    fmt = EMBEDDING_FORMAT
                    self.tables.add(name)
                elif not self.should_quantize(name, module):
                    continue
                else:
                    fmt = self.weight_format(name, module)
                _set_module(model, name, QuantLinear.shell(module, fmt))
                self.formats[name] = fmt
        self.tied_head = (next(iter(head_names)), next(iter(emb_names))) if tied and quant_head else None
        if self.tied_head:
            _tie_buffers(model, *self.tied_head)

    def group_size_for(self, name: str, in_features: int, group_size: int | None,
                       field: str = "group_size") -> int | None:
        """The group-size fallback: the largest power of two dividing ``in_features``, recorded and warned once.

        ``field`` is the config field's name in messages (``block_size`` for code-book methods); the saved
        per-layer record is ``group_size`` for every method."""
        recorded = self.layers.get(name, {}).get("group_size") if self.pre_quantized else None
        if recorded is not None:
            if in_features % recorded:
                raise ConfigError(f"the checkpoint records group size {recorded} for {name}, which does not divide its "
                                  f"{in_features} inputs; config.json does not match the weights: re-save it")
            return recorded  # what the checkpoint says this layer stores
        if group_size is None or in_features % group_size == 0:
            return group_size
        fallback = in_features & -in_features  # largest power of two dividing it
        fallback = min(fallback, group_size)
        if self.config.strict:
            raise ConfigError(f"layer {name} has {in_features} inputs, not a multiple of {field}={group_size}; "
                              f"choose a {field} that divides it (e.g. {fallback}) or pass strict=False")
        self.layers.setdefault(name, {})["group_size"] = fallback
        if not self._warned_fallback:
            self._warned_fallback = True
            warnings.warn(f"{field}={group_size} does not divide {in_features} inputs of {name} (and maybe others): "
                          f"using {field} {fallback} there; `lowbit inspect` lists every such layer", stacklevel=4)
        return fallback

    # ---- per parameter ----------------------------------------------------------------------------
    def quantize(self, name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full-precision weight of module ``name`` → its stored tensors (by default the format's round to
        nearest)."""
        return self.formats[name].encode(weight)

    def quantize_tensor(self, name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the loader calls: int8 tables (embeddings, lm_head) are rounded to nearest in their int8 format."""
        if name in self.tables:
            return EMBEDDING_FORMAT.encode(weight)
        return self.quantize(name, weight)

    def expected_keys(self, name: str) -> list[str]:
        """Pre-quantized: the stored tensor names of module ``name`` (none for a head tied to the embedding)."""
        if self.tied_head and name == self.tied_head[0]:
            return []
        return [f"{name}.{t}" for t in self.formats[name].tensor_names()]

    def summary(self) -> str | None:
        """One line about the quantization just done (e.g. time per layer), printed by ``lowbit quantize``."""
        return None

    # ---- after weights ----------------------------------------------------------------------------
    def postprocess_model(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        """Tie shared quantized tables again, choose kernels and build their layouts.

        ``dtype`` is the model's; each layer resolves an ``auto`` compute dtype for the device it is on, so
        ``device`` (the compute device of the placement) does not decide it.
        """
        if self.tied_head:
            _tie_buffers(model, *self.tied_head)
        compute = self.compute_dtype()
        for module in model.modules():
            if isinstance(module, QuantLinear):
                module.prepare(compute, self.config.kernel, dtype)
                release_freed_memory()


def _embeddings(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    try:
        in_emb = get_in() if get_in else None
    except NotImplementedError:
        in_emb = None
    out_emb = get_out() if get_out else None
    in_emb = in_emb if isinstance(in_emb, nn.Embedding) else None
    out_emb = out_emb if isinstance(out_emb, nn.Linear) else None
    return in_emb, out_emb


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _tie_buffers(model: nn.Module, head: str, emb: str) -> None:
    """The quantized lm_head shares the embedding's int8 table; only the embedding's copy is saved."""
    head_mod, emb_mod = model.get_submodule(head), model.get_submodule(emb)
    head_mod.tied_to = emb
    for n in emb_mod.tensor_names():
        head_mod._buffers[n] = emb_mod._buffers[n]
    head_mod.on_tensors_changed()
