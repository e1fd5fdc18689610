"""Step 3 of loading: the model's skeleton on the meta device, from transformers' own classes."""

from __future__ import annotations

import transformers
from accelerate import init_empty_weights
from torch import nn

from lowbit.errors import CheckpointError


def build_skeleton(path, raw_config: dict, dtype, config=None) -> nn.Module:
    """Instantiate ``architectures[0]`` on meta (from ``config``, a transformers config object, when given, else
    from ``path``'s config.json). No remote code: the class must ship with transformers."""
    arch = raw_config["architectures"][0]
    cls = getattr(transformers, arch, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise CheckpointError(f"architecture {arch!r} is not a class of transformers {transformers.__version__}; "
                              "expected a built-in model class (lowbit never runs code from a checkpoint); "
                              "upgrade transformers or fix config.json's architectures")
    try:
        config = config or transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:  # transformers raises ValueError/KeyError/OSError for bad configs
        raise CheckpointError(f"{path}/config.json cannot be read by transformers ({str(e).splitlines()[0]}); "
                              "fix or re-download config.json") from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    try:
        with init_empty_weights(include_buffers=False):
            return cls._from_config(config, dtype=dtype)
    except Exception as e:  # a config transformers accepted but cannot build a model from (bad sizes, types)
        raise CheckpointError(f"{path}/config.json describes a {arch} transformers cannot build "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                              "fix or re-download config.json") from None
