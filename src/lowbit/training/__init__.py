"""Training on quantized bases: LoRA through PEFT on lowbit's ``QuantLinear``, and which configs train.

``get_peft_model(model, LoraConfig(...))`` (or ``register(config, model)`` then ``peft.get_peft_model``) puts
LoRA adapters on a model from ``lowbit.from_pretrained``; ``load_adapter`` loads a saved one onto it;
``config_trains(config)`` says whether a quantization config's layers pass gradients (transformers'
``is_trainable``). Merging an adapter and re-quantizing is ``lowbit.training.merge`` (``lowbit merge``).

``config_trains`` needs nothing beyond lowbit; the LoRA names import ``peft`` on first use
(``pip install 'lowbit[train]'``).
"""

import importlib

from lowbit.training.trainable import config_trains, trainable_formats

_LORA = ("QuantLoraLinear", "get_peft_model", "load_adapter", "register")

__all__ = ["config_trains", "trainable_formats", *_LORA]


def __getattr__(name: str):
    if name not in _LORA:
        raise AttributeError(f"module 'lowbit.training' has no attribute {name!r}")
    return getattr(importlib.import_module("lowbit.training.lora"), name)  # DependencyError without peft
