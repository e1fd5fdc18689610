"""``imported``: a model whose quantized layers came from another tool's checkpoint (GPTQ, AWQ, bitsandbytes,
compressed-tensors), repacked once at load into lowbit formats (``lowbit.foreign`` reads them).

The config records, per layer, the lowbit format it was mapped to (``layer_formats``: "module format-key"), where
it came from (``source``, ``detail``) and which layers do not decode bit for bit as the source tool decodes them
(``inexact``: "module: why"). Saved by ``save_pretrained`` it is an ordinary lowbit folder that loads again
without the source tool. It only loads: it never quantizes a full-precision weight.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lowbit.config import QuantConfig
from lowbit.errors import ConfigError
from lowbit.formats import WeightFormat, format_from_key
from lowbit.quantizer import Quantizer
from lowbit.registry import register_method


@dataclasses.dataclass(frozen=True)
class ImportedConfig(QuantConfig):
    """Layers read from another tool's checkpoint: each layer's lowbit format and where it came from."""

    method = "imported"
    version = 1
    recorded = ("source", "detail", "layer_formats", "inexact")  # what the checkpoint says of itself; never asked

    source: str = ""  # gptq | awq | bitsandbytes | compressed-tensors
    detail: str = ""  # the source's scheme in one line
    layer_formats: tuple[str, ...] = ()  # "module.name {format key JSON}"
    inexact: tuple[str, ...] = ()  # "module.name: what differs from the source tool's own decoding"

    def validate(self) -> None:
        self.formats()

    def formats(self) -> dict[str, WeightFormat]:
        out = {}
        for entry in self.layer_formats:
            name, _, key = entry.partition(" ")
            if not name or not key:
                raise ConfigError(f"imported.layer_formats entry {entry[:80]!r}; expected 'module.name "
                                  "{format key}'; the checkpoint's config.json is damaged: re-save it")
            out[name] = format_from_key(key)
        return out

    def notes(self) -> dict[str, str]:
        return dict(entry.partition(": ")[::2] for entry in self.inexact)


class ImportedQuantizer(Quantizer):
    config_cls = ImportedConfig
    own_values = False  # GGUF's Q4_0/Q8_0 store negative scales

    def __init__(self, config: ImportedConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.mapped = config.formats()

    def should_quantize(self, name: str, module: nn.Module) -> bool:
        return name in self.mapped

    def weight_format(self, name: str, module: nn.Linear) -> WeightFormat:
        return self.mapped[name]

    def quantize(self, name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        raise ConfigError(f"method 'imported' only loads layers read from another tool's checkpoint; {name} holds a "
                          "full-precision weight; quantize the full-precision model with a lowbit method instead")

    def origin(self, name: str) -> str:
        """Where layer ``name`` came from, and whether the mapping is exact (``lowbit inspect``)."""
        if name not in self.mapped:
            return ""
        note = self.config.notes().get(name)
        return f"{self.config.source} ({self.config.detail}): " + (f"inexact, {note}" if note else "exact")


register_method(ImportedConfig, ImportedQuantizer,
                summary="layers read from a GPTQ / AWQ / bitsandbytes / compressed-tensors checkpoint (load only)")
