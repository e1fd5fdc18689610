"""What loading does with each checkpoint tensor, shared by ``from_pretrained`` and ``quantize_folder``.

Where a tensor goes (``route``), the checks it must pass (shape, kind, NaN/Inf) and the dtype it is kept
in (``converted``), and the one-line errors that name the keys.
"""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn

from lowbit.errors import CheckpointError
from lowbit.loading.checkpoint import Checkpoint
from lowbit.nn.holder import QuantHolder
from lowbit.quantizer import Quantizer


def key_mapper(model: nn.Module, keys: list[str]):
    """Checkpoint names → model names, adding or removing the base-model prefix ("bert.", "model.") if needed."""
    own = set(model.state_dict(keep_vars=True))
    prefix = getattr(model, "base_model_prefix", "") or ""
    if not prefix or any(k in own for k in keys[:50]):
        return lambda k: k
    if any(f"{prefix}.{k}" in own for k in keys[:50]):
        return lambda k: f"{prefix}.{k}"
    return lambda k: k[len(prefix) + 1:] if k.startswith(prefix + ".") else k


def ignore_patterns(model: nn.Module) -> list[re.Pattern]:
    return [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]


def route(module: nn.Module | None, attr: str, key: str, quantizer: Quantizer | None, ignore: list[re.Pattern]) -> str:
    """What loading does with checkpoint tensor ``key`` (attribute ``attr`` of ``module``): ``quantize`` it,
    take it as a ``stored`` pre-quantized part, load it as a ``param`` or ``buffer``, ``skip`` it (rebuilt by
    the model, or ignored by its class) or report it as ``unexpected``."""
    if isinstance(module, QuantHolder) and quantizer is not None:
        if quantizer.pre_quantized and attr in module.tensor_names():
            return "stored"
        if not quantizer.pre_quantized and attr == "weight":
            return "quantize"
    if module is not None and attr in module._parameters:
        return "param"
    if module is not None and attr in module._buffers and attr not in module._non_persistent_buffers_set:
        return "buffer"
    if module is not None and attr in module._non_persistent_buffers_set or any(p.search(key) for p in ignore):
        return "skip"
    return "unexpected"


def check_weight_shape(module: QuantHolder, key: str, tensor: torch.Tensor) -> None:
    if tuple(tensor.shape) != module.weight_shape:
        raise CheckpointError(f"{key!r} has shape {list(tensor.shape)}; expected {list(module.weight_shape)} "
                              "from config.json; the checkpoint does not match its config")


def unexpected_error(ckpt: Checkpoint, model: nn.Module, unexpected: list[str]) -> CheckpointError:
    return CheckpointError(f"{ckpt.path} holds {len(unexpected)} tensor(s) the model does not have: "
                           f"{name_list(unexpected)}; expected only {type(model).__name__}'s tensors; "
                           "the checkpoint does not match config.json")


def missing_error(ckpt: Checkpoint, missing: list[str]) -> CheckpointError:
    return CheckpointError(f"{ckpt.path} lacks {len(missing)} tensor(s) the model needs: {name_list(missing)}; "
                           "the checkpoint is incomplete or does not match config.json")


def tied_head_error(ckpt: Checkpoint) -> CheckpointError:
    return CheckpointError(f"config.json ties the output head to the input embedding, but {ckpt.path} stores a "
                           "different head; expected them equal; set tie_word_embeddings to false in config.json")


def converted(old: torch.Tensor | None, tensor: torch.Tensor, dtype: torch.dtype, key: str) -> torch.Tensor:
    """Checkpoint tensor ``key`` checked against the model's ``old`` one and cast to what loading keeps:
    floating tensors to ``dtype`` (or ``old``'s dtype where that is not floating)."""
    if old is not None and tuple(old.shape) != tuple(tensor.shape):
        raise CheckpointError(f"{key!r} has shape {list(tensor.shape)}; expected {list(old.shape)} from config.json; "
                              "the checkpoint does not match its config")
    if old is not None and old.is_floating_point() != tensor.is_floating_point():
        raise CheckpointError(f"{key!r} is stored as {tensor.dtype}; expected a {'floating-point' if old.is_floating_point() else 'integer'} "
                              "tensor like the model's; the checkpoint is damaged or does not match config.json")
    if tensor.is_floating_point():
        tensor = tensor.to(dtype if old is None or old.is_floating_point() else old.dtype)
    return tensor


NONFINITE = ("error", "clamp")
# float8 types have no isfinite: their NaN/Inf are bit patterns (byte & mask == value)
_FLOAT8_NONFINITE = {torch.float8_e4m3fn: (0x7F, 0x7F), torch.float8_e5m2: (0x7C, 0x7C),
                     torch.float8_e4m3fnuz: (0xFF, 0x80), torch.float8_e5m2fnuz: (0xFF, 0x80)}
if hasattr(torch, "float8_e8m0fnu"):
    _FLOAT8_NONFINITE[torch.float8_e8m0fnu] = (0xFF, 0xFF)


def _clamp_nonfinite(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype in _FLOAT8_NONFINITE:
        return _clamp_nonfinite(tensor.float()).to(tensor.dtype)
    finite = torch.isfinite(tensor)
    top = float(tensor[finite].abs().max()) if finite.any() else 0.0
    return torch.nan_to_num(tensor, nan=0.0, posinf=top, neginf=-top)


def check_finite(key: str, tensor: torch.Tensor, clamp: bool, clamped: dict[str, int]) -> torch.Tensor:
    """``tensor``, or an error naming ``key`` if it holds NaN/Inf; with ``clamp``, a clamped copy, counted in ``clamped``."""
    bad = _count_nonfinite(tensor)
    if bad and not clamp:
        raise CheckpointError(f"{key!r} has {bad} NaN/Inf value(s); expected finite values; the checkpoint is "
                              "damaged or diverged: fix the weights, or load with nonfinite='clamp' "
                              "(--clamp-nonfinite) to replace them")
    if bad:
        clamped[key] = bad
        tensor = _clamp_nonfinite(tensor)
    return tensor


def warn_clamped(clamped: dict[str, int], stacklevel: int) -> None:
    if clamped:
        warnings.warn(f"replaced NaN/Inf values in {len(clamped)} tensor(s) (NaN → 0, ±Inf → ± the tensor's "
                      f"largest finite magnitude): {', '.join(f'{k!r} ({n})' for k, n in clamped.items())}",
                      stacklevel=stacklevel)


def _count_nonfinite(tensor: torch.Tensor) -> int:
    """NaN/Inf values of any floating dtype, float8 included."""
    if not tensor.is_floating_point() or not tensor.numel():
        return 0
    if tensor.dtype in _FLOAT8_NONFINITE:
        mask, value = _FLOAT8_NONFINITE[tensor.dtype]
        hit = torch.eq(tensor.view(torch.uint8) & mask, value)
        return int(hit.sum()) if bool(hit.any()) else 0
    if torch.isfinite(torch.stack(torch.aminmax(tensor))).all():
        return 0
    return int((~torch.isfinite(tensor)).sum())


def name_list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])  # repr: a name never breaks the line or the terminal
    return shown + (f" … (+{len(names) - limit} more)" if len(names) > limit else "")
