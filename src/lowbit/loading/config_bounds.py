"""config.json's sizes bounded by the tensors the checkpoint actually holds, before any skeleton is built.

A config that promises far more than the files hold (``num_hidden_layers=100000`` over a two-block checkpoint)
would make transformers build a skeleton for minutes while memory grows; it fails here instead, in one line. The
bounds are loose on purpose (they hold for every layout lowbit stores, packed ones included): the blocks the
config names must appear as indices in the tensor names, and no width may exceed every dimension of every tensor.
"""

from __future__ import annotations

import re

from lowbit.errors import CheckpointError
from lowbit.loading.checkpoint import Checkpoint

LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
WIDTH_KEYS = ("hidden_size", "intermediate_size", "vocab_size", "n_embd")
_INDEX = re.compile(r"\.(\d+)\.")


def check_config_bounds(ckpt: Checkpoint) -> None:
    """Raise CheckpointError if config.json's layer count or widths exceed what the tensors hold."""
    for section in (ckpt.config, ckpt.config.get("text_config")):
        if isinstance(section, dict):
            _check(ckpt, section)


def _check(ckpt: Checkpoint, config: dict) -> None:
    where = repr(str(ckpt.path / "config.json"))
    indices = [int(m) for name in ckpt.weight_map for m in _INDEX.findall(f".{name}.")]
    blocks = max(indices, default=-1) + 1
    for key in LAYER_KEYS:
        value = config.get(key)
        if _is_int(value) and indices and value > blocks:
            raise CheckpointError(f"{where} has {key}={value}, but the checkpoint's tensors hold {blocks} block(s); "
                                  f"expected at most {blocks}; fix config.json or use the matching checkpoint")
    widest = max((d for shape in ckpt.shapes.values() for d in shape), default=0)
    for key in WIDTH_KEYS:
        value = config.get(key)
        if _is_int(value) and ckpt.shapes and value > widest:
            raise CheckpointError(f"{where} has {key}={value}, but no tensor of the checkpoint has a dimension above "
                                  f"{widest}; expected the sizes of the stored tensors; fix config.json")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
