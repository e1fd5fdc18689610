"""``HfQuantConfig``: a lowbit config as a transformers ``quantization_config`` (``quant_method: "lowbit"``).

    model = AutoModelForCausalLM.from_pretrained(hf_folder, quantization_config=lowbit.HfQuantConfig("int4"))

It wraps one lowbit config (``lowbit.config(method, **fields)``, validated there) and, for a loaded folder, its
per-layer records; ``to_dict`` is exactly the ``quantization_config`` lowbit writes to config.json.
"""

from __future__ import annotations

from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from lowbit.config import QUANT_METHOD, QuantConfig
from lowbit.errors import ConfigError
from lowbit.hf.compat import check_version
from lowbit.loading.resolve import resolve_quantization
from lowbit.registry import build_config


class HfQuantConfig(QuantizationConfigMixin):
    """``HfQuantConfig("int4", group_size=64)`` or ``HfQuantConfig(lowbit.config(...))``."""

    def __init__(self, method: str | QuantConfig = "int4", **fields: Any) -> None:
        check_version()
        if isinstance(method, QuantConfig):
            if fields:
                raise ConfigError(f"HfQuantConfig got a config and fields {sorted(fields)}; pass either a config or "
                                  "a method name with its fields")
            cfg = method
        elif isinstance(method, str):
            cfg = build_config(method, **fields)
        else:
            raise ConfigError(f"HfQuantConfig(method={method!r}); expected a method name such as 'int4' "
                              "(lowbit.methods() lists them) or a lowbit.config(...)")
        self.quant_method = QUANT_METHOD
        self.lowbit = cfg
        self.layers: dict[str, dict] = {}

    @classmethod
    def from_dict(cls, config_dict: dict, return_unused_kwargs: bool = False, **kwargs: Any):
        """What transformers calls with a checkpoint's ``quantization_config`` (checked as lowbit checks it)."""
        cfg, _, layers = resolve_quantization(config_dict, None)
        config = cls(cfg)
        config.layers = layers
        return (config, kwargs) if return_unused_kwargs else config

    # A folder's config meets the one passed to from_pretrained: transformers keeps the folder's and sets the
    # passed one's loading attributes on it (register.py lists this class among those that have them). As in
    # lowbit.from_pretrained, those are the loading-only fields (kernel, compute_dtype); another method is an error.
    def get_loading_attributes(self) -> dict[str, Any]:
        return {"loading": (self.lowbit.method, {f: getattr(self.lowbit, f) for f in self.lowbit.loading_fields()})}

    @property
    def loading(self) -> dict[str, Any]:
        return {f: getattr(self.lowbit, f) for f in self.lowbit.loading_fields()}

    @loading.setter
    def loading(self, value: tuple[str, dict[str, Any]]) -> None:
        method, fields = value
        if method != self.lowbit.method:
            raise ConfigError(f"the checkpoint is quantized with {self.lowbit.method!r} but quantization_config asks for "
                              f"{method!r}; load it without a quantization_config, or start from the full-precision "
                              "checkpoint")
        self.lowbit = self.lowbit.replace(**fields)

    def to_dict(self) -> dict[str, Any]:
        out = self.lowbit.to_dict()
        if self.layers:
            out["layers"] = {k: dict(v) for k, v in sorted(self.layers.items())}
        return out

    def __iter__(self):
        yield from self.to_dict().items()
