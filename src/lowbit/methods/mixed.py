"""``mixed``: one method per layer, as ``lowbit fit`` chose it (``lowbit.fit``).

The config records the candidates (``candidates``: "label {method config JSON}", e.g. ``gptq4 {"method": "gptq",
"bits": 4, ...}``) and, for every quantized Linear, the candidate it uses and the format it stores (``plan``:
"module.name label {format key JSON}"). Loading needs only the formats; quantizing hands each layer to its
candidate's own quantizer: data-free candidates through their ``quantize``, calibrated ones (GPTQ) through their
``calibrate_stage``, stage by stage in the block's call order, after the block's data-free layers are quantized.
Candidates that move scales across layers (AWQ, SmoothQuant) cannot share a block with other methods and are
refused. Layers the plan does not name stay at full precision.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch
from torch import nn

from lowbit.calibration.inputs import BlockInputs, Reference, call_stages
from lowbit.calibration.method import CalibratedQuantizer, Stored, use_dequantized
from lowbit.config import QuantConfig
from lowbit.errors import ConfigError, FormatError
from lowbit.formats import WeightFormat, format_from_key
from lowbit.quantizer import Quantizer
from lowbit.registry import config_from_dict, get, register_method

BLOCK_WIDE = ("awq", "smoothquant", "mixed", "imported")  # methods that cannot quantize a single layer of a block


def _entry(kind: str, entry: str, parts: int) -> list[str]:
    fields = entry.split(" ", parts - 1)
    if len(fields) != parts or not all(fields):
        raise ConfigError(f"mixed.{kind} entry {entry[:80]!r} is malformed; expected "
                          f"{'label {config}' if kind == 'candidates' else 'module.name label {format key}'}; "
                          "the checkpoint's config.json is damaged: re-save it")
    return fields


@dataclasses.dataclass(frozen=True)
class MixedConfig(QuantConfig):
    """One method per layer, chosen by `lowbit fit` under a size budget."""

    method = "mixed"
    version = 1

    candidates: tuple[str, ...] = ()  # "label {method config JSON}"
    plan: tuple[str, ...] = ()  # "module.name label {format key JSON}"

    def validate(self) -> None:
        configs = self.candidate_configs()
        for name, (label, _) in self.layer_plan().items():
            if label not in configs:
                raise ConfigError(f"mixed.plan gives {name} the candidate {label!r}, which mixed.candidates does not "
                                  f"define; expected one of {sorted(configs)}")

    def candidate_configs(self) -> dict[str, QuantConfig]:
        out = {}
        for entry in self.candidates:
            label, raw = _entry("candidates", entry, 2)
            try:
                data = json.loads(raw)
            except ValueError:
                raise ConfigError(f"mixed.candidates[{label!r}] is not JSON; the checkpoint's config.json is damaged: "
                                  "re-save it") from None
            cfg = config_from_dict(data)
            if cfg.method in BLOCK_WIDE:
                raise ConfigError(f"candidate {label!r} uses method {cfg.method!r}, which moves scales across the "
                                  f"layers of a block and cannot be mixed per layer; expected a method other than "
                                  f"{', '.join(BLOCK_WIDE)}")
            out[label] = cfg
        return out

    def layer_plan(self) -> dict[str, tuple[str, WeightFormat]]:
        """module name → (candidate label, the format it stores)."""
        out = {}
        for entry in self.plan:
            name, label, key = _entry("plan", entry, 3)
            try:
                out[name] = (label, format_from_key(key))
            except FormatError as e:
                raise ConfigError(f"mixed.plan[{name!r}]: {e}") from None
        return out

    def needs_data(self) -> bool:
        """Whether a candidate that some layer uses is calibrated (the plan then goes through the runner)."""
        used = {label for label, _ in self.layer_plan().values()}
        configs = self.candidate_configs()
        return any(get(configs[label].method).quantizer_cls.requires_calibration for label in used)


def mixed_config(candidates: dict[str, QuantConfig], plan: dict[str, tuple[str, WeightFormat]],
                 **fields: Any) -> MixedConfig:
    """The config of a plan: candidate label → its config, module → (label, format)."""
    return MixedConfig(candidates=tuple(f"{label} {json.dumps(cfg.to_dict(), sort_keys=True)}"
                                        for label, cfg in sorted(candidates.items())),
                       plan=tuple(f"{name} {label} {fmt.key()}" for name, (label, fmt) in plan.items()), **fields)


class MixedQuantizer(CalibratedQuantizer):
    config_cls = MixedConfig

    def __init__(self, config: MixedConfig, **kwargs) -> None:
        if not isinstance(config, MixedConfig):
            raise ConfigError(f"MixedQuantizer got a {type(config).__name__}; expected MixedConfig")
        self.requires_calibration = config.needs_data()  # this plan's, not the class's
        super().__init__(config, **kwargs)
        self.planned = config.layer_plan()
        if not self.pre_quantized and not self.planned:
            raise ConfigError("method 'mixed' quantizes with a plan and this config has none; expected one made by "
                              "`lowbit fit SRC OUT --budget 4.25bpw` (lowbit.fit)")
        self.subs: dict[str, Quantizer] = {}
        if not self.pre_quantized:  # quantizing: each used candidate's own quantizer, for its own layers
            used = {label for label, _ in self.planned.values()}
            for label, cfg in config.candidate_configs().items():
                if label in used:  # a calibrated one only gets here with data (checked above)
                    self.subs[label] = get(cfg.method).quantizer_cls(cfg, calibrated=True)

    def should_quantize(self, name: str, module: nn.Module) -> bool:
        return name in self.planned

    def weight_format(self, name: str, module: nn.Linear) -> WeightFormat:
        label, fmt = self.planned[name]
        sub = self.subs.get(label)
        if sub is not None:
            sub.model_type = self.model_type
            own = sub.weight_format(name, module)
            if own != fmt:
                raise ConfigError(f"mixed.plan stores {name} as {fmt.describe()}, but candidate {label!r} makes "
                                  f"{own.describe()}; expected the plan made for this checkpoint: run lowbit fit again")
            sub.formats[name] = fmt
        return fmt

    def label(self, name: str) -> str:
        return self.planned[name][0]

    def quantize(self, name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.subs[self.label(name)].quantize(name, weight)

    @property
    def wants_reference(self) -> bool:
        return any(isinstance(s, CalibratedQuantizer) and s.wants_reference for s in self.subs.values())

    def calibrate_block(self, block: nn.Module, prefix: str, inputs: BlockInputs,
                        reference: Reference | None = None) -> Stored:
        """The block's data-free layers first (rounded, then computing with their quantized weights), then the
        calibrated ones in the block's call order, a stage (Linears fed one input) at a time, each candidate on its
        own layers of the stage: every layer sees those before it quantized, as it will run (which ``fp_targets``
        needs: its targets assume the inputs the layer is calibrated on)."""
        stored: Stored = {}
        calibrated: dict[str, nn.Linear] = {}
        for name, linear in self.block_linears(block, prefix).items():
            sub = self.subs[self.label(name)]
            if not sub.requires_calibration:
                stored[name] = sub.quantize(name, linear.weight.data)
                use_dequantized(linear, self.formats[name], stored[name])
            else:
                calibrated[name] = linear
        subs = {id(s): s for s in (self.subs[self.label(n)] for n in calibrated)}.values()
        if not all(hasattr(s, "calibrate_stage") for s in subs):  # a plugin's method: each on its own layers
            for sub in subs:
                stored.update(sub.calibrate_block(block, prefix, inputs, reference if sub.wants_reference else None))
            return stored
        for stage in call_stages(block, calibrated, inputs) if calibrated else []:
            for sub in {id(s): s for s in (self.subs[self.label(n)] for n in stage)}.values():
                mine = {n: calibrated[n] for n in stage if self.subs[self.label(n)] is sub}
                ref = reference if sub.wants_reference else None
                stored.update(sub.calibrate_stage(block, prefix, inputs, mine, ref))
        return stored

    def summary(self) -> str | None:
        counts: dict[str, int] = {}
        for label, _ in self.planned.values():
            counts[label] = counts.get(label, 0) + 1
        lines = [f"mixed: {', '.join(f'{n} x {label}' for label, n in sorted(counts.items()))}"]
        lines += [s for s in (sub.summary() for sub in self.subs.values()) if s]
        return "\n".join(lines)

    def origin(self, name: str) -> str:
        """The candidate that quantized layer ``name`` (``lowbit inspect``)."""
        return f"fit: {self.label(name)}" if name in self.planned else ""


register_method(MixedConfig, MixedQuantizer)
