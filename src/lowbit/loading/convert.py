"""``lowbit.quantize_folder``: disk-to-disk quantization of checkpoints larger than memory, tensor by tensor.

The model is built on the meta device only, to know its names, shapes and formats; each source tensor is
read, checked, quantized (or cast to the target dtype) and handed to the writer, which writes a shard
whenever one fills. Tensors come in the order that saving the loaded model writes them, so the output is
byte for byte ``save_pretrained(from_pretrained(src, quantization=cfg), out)`` at the same shard size.

Memory: one source tensor with its quantization temporaries, plus the shard being filled, which
safetensors copies to bytes once more while writing it. ``max_memory`` therefore caps the shard buffer at
a third of it: shards are then smaller than ``max_shard_size`` (and split differently from save_pretrained's).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from lowbit.config import QuantConfig
from lowbit.errors import ConfigError, FormatError, SaveError
from lowbit.loading.checkpoint import Checkpoint, open_checkpoint, reading
from lowbit.loading.pipeline import attach
from lowbit.loading.resolve import resolve_dtype, resolve_quantization
from lowbit.loading.save import check_output, parse_size, write_folder
from lowbit.loading.skeleton import build_skeleton
from lowbit.loading.tensors import (
    NONFINITE,
    check_finite,
    check_weight_shape,
    converted,
    ignore_patterns,
    key_mapper,
    missing_error,
    route,
    tied_head_error,
    unexpected_error,
    warn_clamped,
)
from lowbit.nn.holder import QuantHolder
from lowbit.quantizer import Quantizer
from lowbit.registry import get
from lowbit.utils import release_freed_memory

CPU = torch.device("cpu")
COMPARE_BYTES = 1 << 24  # rows compared at a time when checking a tied head against the embedding


def quantize_folder(src: str | Path, out: str | Path, quantization: QuantConfig | str, *,
                    max_shard_size: int | str = "2GB", max_memory: int | str | None = None,
                    dtype: torch.dtype | str | None = None, overwrite: bool = False, progress: bool = False,
                    nonfinite: str = "error") -> Path:
    """Quantize the checkpoint folder ``src`` into ``out`` (on the CPU) without ever holding the model's weights.

    The folder equals ``save_pretrained(from_pretrained(src, quantization), out, max_shard_size)`` byte for
    byte. ``max_memory`` (bytes or '2GB': working memory beyond the interpreter and its imports) caps the shard
    being filled at a third of it, so shards may be smaller than ``max_shard_size``; a tensor larger than that
    gets a shard of its own, and the source's largest tensor must fit. ``nonfinite`` as in ``from_pretrained``.
    A missing or unexpected tensor is a CheckpointError before any work; nothing half-written is left.
    """
    return convert(src, out, quantization, max_shard_size=max_shard_size, max_memory=max_memory, dtype=dtype,
                   overwrite=overwrite, progress=progress, nonfinite=nonfinite)[0]


def convert(src: str | Path, out: str | Path, quantization: QuantConfig | str, *, max_shard_size: int | str = "2GB",
            max_memory: int | str | None = None, dtype: torch.dtype | str | None = None, overwrite: bool = False,
            progress: bool = False, nonfinite: str = "error") -> tuple[Path, Quantizer]:
    """:func:`quantize_folder`, also returning the quantizer (its ``summary()``, its ``layers``)."""
    if nonfinite not in NONFINITE:
        raise ConfigError(f"nonfinite={nonfinite!r} is not valid; expected one of {list(NONFINITE)}")
    limit = shard_limit(max_shard_size, max_memory)
    check_output(out, overwrite)  # before any work, not after
    ckpt = open_checkpoint(src)
    if ckpt.quantization_config is not None:
        raise ConfigError(f"{ckpt.path} is already quantized (config.json has a quantization_config); expected a "
                          "full-precision checkpoint; quantize the original weights, or load this one as it is")
    if quantization is None:
        raise ConfigError("quantization=None; expected a method name or lowbit.config(...) to quantize with")
    cfg = resolve_quantization(None, quantization)[0]
    dtype = resolve_dtype(dtype, ckpt.config)
    quantizer = get(cfg.method).quantizer_cls(cfg, pre_quantized=False)
    if not quantizer.is_serializable:
        raise SaveError(f"method {cfg.method!r} cannot be saved; keep the full-precision checkpoint and "
                        "quantize on load instead")
    quantizer.validate_environment(CPU, dtype)
    dtype = quantizer.update_dtype(dtype) or dtype
    model = build_skeleton(ckpt.path, ckpt.config, dtype)
    quantizer.preprocess_model(model)
    if not quantizer.tied_head:
        model.tie_weights()  # on meta: a tied head is then the embedding's tensor, written once, as saving does
    plan = _plan(model, ckpt, quantizer)  # a missing or unexpected tensor fails here, before any work
    tensors = _stream(plan, model, ckpt, quantizer, dtype, progress, nonfinite == "clamp")
    return write_folder(out, tensors, limit, model, ckpt.path, overwrite=overwrite), quantizer


def shard_limit(max_shard_size: int | str, max_memory: int | str | None) -> int:
    """Bytes of tensors the writer buffers before writing a shard: ``max_shard_size``, at most max_memory / 3."""
    limit = parse_size(max_shard_size)
    if max_memory is None:
        return limit
    return max(1, min(limit, parse_size(max_memory, "max_memory") // 3))


@dataclasses.dataclass
class _Item:
    """One step of the output: a tensor ``name`` (from checkpoint ``key``, or the skeleton's own ``old`` buffer when
    there is none), or, with ``layer`` set, the stored tensors of quantized layer ``name`` from its weight ``key``."""

    name: str
    key: str | None
    old: torch.Tensor | None = None
    layer: QuantHolder | None = None


@dataclasses.dataclass
class _Plan:
    items: list[_Item]
    rest: list[str]  # checkpoint keys not written (tied duplicates, rebuilt or ignored buffers)
    source: dict[str, str]  # model name → checkpoint key


def _plan(model: nn.Module, ckpt: Checkpoint, quantizer: Quantizer) -> _Plan:
    """What to write, in the order saving the loaded model writes it (``save._tensors``: module by module, a
    tied tensor once); missing or unexpected checkpoint tensors are errors naming them."""
    to_model = key_mapper(model, list(ckpt.weight_map))
    source = {to_model(k): k for k in ckpt.weight_map}
    items, missing, seen, taken = [], [], set(), set()
    for prefix, module in model.named_modules():
        local: dict[str, torch.Tensor] = {}
        module._save_to_state_dict(local, f"{prefix}." if prefix else "", True)
        stored = set(module.tensor_names()) if isinstance(module, QuantHolder) else set()
        for name, old in local.items():
            if old is None or id(old) in seen:
                continue  # a tied tensor is written once, under its first name
            seen.add(id(old))
            layer = None
            if (name[len(prefix) + 1:] if prefix else name) in stored:
                if module in taken:
                    continue  # all the layer's stored tensors come from quantizing its weight, at once
                taken.add(module)
                name, old, layer = f"{prefix}.weight", None, module
            key = source.get(name)
            if key is None and (layer is not None or old.device.type == "meta"):
                missing.append(name)
            items.append(_Item(prefix if layer is not None else name, key, old, layer))
    modules = dict(model.named_modules())
    ignore = ignore_patterns(model)
    used = {item.key for item in items}
    rest = [k for k in ckpt.weight_map if k not in used]
    unexpected = []
    for key in rest:
        module_name, _, attr = to_model(key).rpartition(".")
        if route(modules.get(module_name), attr, key, quantizer, ignore) == "unexpected":
            unexpected.append(key)
    if unexpected:
        raise unexpected_error(ckpt, model, unexpected)
    if missing:
        raise missing_error(ckpt, missing)
    return _Plan(items, rest, source)


def _stream(plan: _Plan, model: nn.Module, ckpt: Checkpoint, quantizer: Quantizer, dtype: torch.dtype,
            progress: bool, clamp: bool, done=None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the quantized model, one source tensor at a time. At the end the tensors not written
    are checked (NaN/Inf, a tied head equal to the embedding) and the quantization config, with per-layer
    fallbacks, is attached to ``model.config`` for writing.

    ``done`` (``name in done``, ``done[name]``) holds output tensors made already (the calibration runner's
    blocks): those are taken from it instead of the checkpoint."""
    clamped: dict[str, int] = {}
    with _Reader(ckpt, progress) as reader:
        def read(key: str) -> torch.Tensor:
            return check_finite(key, reader(key), clamp, clamped)

        for item in plan.items:
            names = [f"{item.name}.{a}" for a in item.layer.tensor_names()] if item.layer is not None else [item.name]
            if done is not None and names[0] in done:
                yield from ((n, done[n]) for n in names)
            elif item.layer is not None:
                yield from _quantized(item, read(item.key), quantizer)
            elif item.key is None:  # made by the model itself (a persistent buffer the checkpoint lacks)
                yield item.name, item.old.detach().to("cpu").contiguous()
            else:
                tensor = converted(item.old, read(item.key), dtype, item.key)
                yield item.name, tensor.clone(memory_format=torch.contiguous_format)  # owned, not a view of the file
                del tensor
            release_freed_memory()
        for key in plan.rest:
            read(key)  # NaN/Inf in any tensor is an error, as when loading
        _check_tied_head(model, ckpt, quantizer, reader, plan.source)
    warn_clamped(clamped, stacklevel=5)
    attach(model, quantizer)


def _quantized(item: _Item, tensor: torch.Tensor, quantizer: Quantizer) -> Iterator[tuple[str, torch.Tensor]]:
    layer = item.layer
    check_weight_shape(layer, item.key, tensor)
    parts = quantizer.quantize_tensor(item.name, tensor)
    del tensor
    if set(parts) != set(layer.tensor_names()):
        raise FormatError(f"{item.name}: method {quantizer.config.method!r} made tensors {sorted(parts)}; expected "
                          f"{layer.tensor_names()} of {layer.fmt.describe()}; this is a bug in the method")
    for attr in layer.tensor_names():  # layout order, as saving a loaded model writes them
        yield f"{item.name}.{attr}", parts.pop(attr).contiguous()


def _check_tied_head(model: nn.Module, ckpt: Checkpoint, quantizer: Quantizer, reader: _Reader,
                     source: dict[str, str]) -> None:
    """A head that config.json ties to the embedding must equal it (compared a few rows at a time), as when loading."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if quantizer.tied_head or not getattr(model.config, "tie_word_embeddings", False) or head is None or emb is None:
        return
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    keys = [source.get(f"{names.get(id(m))}.weight") for m in (head, emb)]
    if None in keys or reader.shape(keys[0]) != reader.shape(keys[1]):
        return
    rows, dtype = max(1, COMPARE_BYTES // max(1, reader.shape(keys[0])[-1] * 4)), emb.weight.dtype
    for start in range(0, reader.shape(keys[0])[0], rows):
        head_rows, emb_rows = (reader.rows(k, start, start + rows).to(dtype) for k in keys)
        if not torch.equal(head_rows, emb_rows):
            raise tied_head_error(ckpt)


class _Reader:
    """The checkpoint's tensors by name, in any order; a shard is closed once all its tensors were read."""

    def __init__(self, ckpt: Checkpoint, progress: bool) -> None:
        self.ckpt, self.used = ckpt, set()
        self.left = Counter(ckpt.weight_map.values())
        self.files: dict[str, object] = {}
        self.bar = tqdm(total=len(ckpt.weight_map), desc="quantizing", unit="tensor", disable=not progress)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        for f in self.files.values():
            f.__exit__(None, None, None)
        self.files.clear()
        self.bar.close()

    def __call__(self, key: str) -> torch.Tensor:
        shard = self.ckpt.weight_map[key]
        tensor = self._do(shard, lambda f: f.get_tensor(key))
        if key not in self.used:
            self.used.add(key)
            self.bar.update()
            self.left[shard] -= 1
            if not self.left[shard] and shard in self.files:
                self.files.pop(shard).__exit__(None, None, None)
        return tensor

    def shape(self, key: str) -> list[int]:
        return list(self._do(self.ckpt.weight_map[key], lambda f: f.get_slice(key).get_shape()))

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self._do(self.ckpt.weight_map[key], lambda f: f.get_slice(key)[start:stop])

    def _do(self, shard: str, fn):
        path = self.ckpt.path / shard
        with reading(path):
            if shard not in self.files:
                self.files[shard] = safe_open(str(path), framework="pt", device="cpu").__enter__()
            return fn(self.files[shard])
