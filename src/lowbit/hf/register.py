"""Add lowbit's config and quantizer to transformers' tables (``lowbit.hf.install``'s hook calls this once transformers' quantizer
table is imported). Idempotent: transformers' ``register_*`` raise when a name is taken, so a name already in
the tables is left as it is."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def register() -> None:
    try:
        from transformers.quantizers import auto
    except ImportError as e:  # a transformers without custom quantizers: lowbit.from_pretrained still works
        log.debug("transformers has no quantizer registry (%s); lowbit is not registered with it", e)
        return
    from lowbit.config import QUANT_METHOD
    from lowbit.hf.config import HfQuantConfig
    from lowbit.hf.quantizer import LowbitHfQuantizer

    if QUANT_METHOD not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
        auto.register_quantization_config(QUANT_METHOD)(HfQuantConfig)
    if QUANT_METHOD not in auto.AUTO_QUANTIZER_MAPPING:
        auto.register_quantizer(QUANT_METHOD)(LowbitHfQuantizer)
    if HfQuantConfig not in auto.LOADING_ATTRIBUTES_CONFIG_TYPES:  # kernel= / compute_dtype= when loading a folder
        auto.LOADING_ATTRIBUTES_CONFIG_TYPES = (*auto.LOADING_ATTRIBUTES_CONFIG_TYPES, HfQuantConfig)
