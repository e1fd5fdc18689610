"""Readers of other tools' quantized checkpoints: each maps a foreign layer onto a lowbit format, exactly where it
can, and repacks its tensors once, at load (see ``base``). One module per source format; ``translate`` picks it
from config.json's ``quantization_config.quant_method``. The loader's side is ``lowbit.loading.foreign``."""

from __future__ import annotations

from lowbit.errors import ConfigError
from lowbit.foreign import awq, bnb, compressed_tensors, gptq
from lowbit.foreign.base import LayerMap, Peek, Translation

READERS = {"gptq": gptq.translate, "awq": awq.translate, "bitsandbytes": bnb.translate,
           "compressed-tensors": compressed_tensors.translate}

__all__ = ["READERS", "LayerMap", "Peek", "Translation", "is_foreign", "translate"]


def is_foreign(quantization_config: dict | None) -> bool:
    """Whether config.json's quantization_config names another tool's format (not lowbit's own)."""
    return isinstance(quantization_config, dict) and quantization_config.get("quant_method", "lowbit") != "lowbit"


def translate(peek: Peek, quantization_config: dict) -> Translation:
    method = quantization_config.get("quant_method")
    if method not in READERS:
        raise ConfigError(f"quantization_config.quant_method={method!r} is not a format lowbit reads; expected "
                          f"'lowbit' or one of {sorted(READERS)} (GGUF files are read by path)")
    return READERS[method](peek, quantization_config)
