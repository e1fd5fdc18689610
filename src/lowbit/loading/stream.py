"""The one tensor stream: checkpoint tensors, one at a time, into a model (``load_into``) or out as the quantized
model's tensors (``output_tensors``), with the checks done once: shape, NaN/Inf (``Reader``) and a tied head.

The output's tensors come from *sources*, asked in turn for each item of the plan: the checkpoint itself
(``CheckpointSource``: read, quantize or cast) last, and before it any tensors made already, such as the
calibration runner's finished blocks (``StoredSource``: safetensors files of output tensors by name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Self

import torch
from tqdm.auto import tqdm
from safetensors import safe_open
from torch import nn

from lowbit.errors import FormatError
from lowbit.loading.plan import Item, Plan
from lowbit.loading.reader import Reader
from lowbit.loading.save import attach
from lowbit.loading.tensors import check_weight_shape, converted, tied_head_error, unexpected_error, warn_clamped
from lowbit.nn.holder import QuantHolder
from lowbit.quantizer import Quantizer
from lowbit.utils import release_freed_memory

COMPARE_BYTES = 1 << 24  # rows compared at a time when checking a tied head against the embedding


def quantize_weight(quantizer: Quantizer, layer: QuantHolder, name: str, key: str,
                    tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stored tensors of layer ``name`` from its full-precision weight (checkpoint ``key``), shape checked."""
    check_weight_shape(layer, key, tensor)
    try:
        return quantizer.quantize_tensor(name, tensor)
    except FormatError as e:
        raise FormatError(f"{name}: {e}") from None


def check_stored(model: nn.Module, own: bool = True) -> None:
    """Every pre-quantized layer's stored values within what its format allows (``WeightFormat.check``), once per
    layer after loading: a damaged or hand-edited folder is an error naming the layer, not wrong logits."""
    for name, module in model.named_modules():
        if isinstance(module, QuantHolder) and not getattr(module, "tied_to", None):
            tensors = module.canonical_tensors()
            if any(t is None or t.device.type == "meta" for t in tensors.values()):
                continue  # not loaded: reported as missing
            try:
                module.fmt.check(tensors, own)
            except FormatError as e:
                raise FormatError(f"{name}.{e}") from None


def load_into(plan: Plan, reader: Reader, device_of: Callable[[str], torch.device], dtype: torch.dtype) -> None:
    """Every checkpoint tensor, in file order, checked and put where the plan routes it: quantized on its
    target device, a stored part of a pre-quantized layer, or a parameter/buffer cast to ``dtype``. Unexpected
    tensors are an error at the end; then a tied head must equal the embedding."""
    quantizer, unexpected = plan.quantizer, []
    for key in reader.in_file_order():
        tensor = reader(key)
        step = plan.route(key)
        module, target = step.module, device_of(step.name)
        if step.kind == "stored":
            module.set_quant_tensor(step.attr, tensor.to(target, copy=True), step.module_name)
        elif step.kind == "quantize":
            module.load_quantized(quantize_weight(quantizer, module, step.module_name, key, tensor.to(target)),
                                  step.module_name)
            del tensor
            release_freed_memory()  # else the freed temporaries fragment the heap between packed weights
        elif step.kind in ("param", "buffer"):
            _assign(module, step.attr, tensor, target, dtype, key, is_param=step.kind == "param")
        elif step.kind == "unexpected":
            unexpected.append(key)
        tensor = None
    reader.bar.close()
    release_freed_memory()
    warn_clamped(reader.clamped, stacklevel=4)
    if unexpected:
        raise unexpected_error(plan.ckpt, plan.model, unexpected)
    if quantizer is not None and quantizer.pre_quantized:
        check_stored(plan.model, quantizer.own_values)
    check_tied_head(plan, reader)


def _assign(module: nn.Module, attr: str, tensor: torch.Tensor, device, dtype, key: str, is_param: bool) -> None:
    old = module._parameters[attr] if is_param else module._buffers[attr]
    # an owned copy: a tensor read from a shard may still be a view of the memory-mapped file
    tensor = converted(old, tensor, dtype, key).to(device, copy=True)
    if is_param:
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
    else:
        module._buffers[attr] = tensor


def check_tied_head(plan: Plan, reader: Reader) -> None:
    """A config that ties the head to the embedding, over a checkpoint whose head differs from it, would silently
    drop the head: refuse it. Compared a few rows at a time from the checkpoint, in the model's dtype (NaN equal
    to NaN: clamping equal tensors keeps them equal)."""
    model, quantizer = plan.model, plan.quantizer
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if (quantizer is not None and quantizer.tied_head) or not getattr(model.config, "tie_word_embeddings", False) \
            or head is None or emb is None:
        return
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    keys = [plan.source.get(f"{names.get(id(m))}.weight") for m in (head, emb)]
    if None in keys or reader.shape(keys[0]) != reader.shape(keys[1]):
        return
    shape, dtype = reader.shape(keys[0]), emb.weight.dtype
    rows = max(1, COMPARE_BYTES // max(1, shape[-1] * 4))
    for start in range(0, shape[0], rows):
        head_rows, emb_rows = (reader.rows(k, start, start + rows).to(dtype) for k in keys)
        if not bool((torch.eq(head_rows, emb_rows) | (head_rows.isnan() & emb_rows.isnan())).all()):
            raise tied_head_error(plan.ckpt)


class Source:
    """Where output tensors come from: ``holds(item)`` says whether it makes plan item ``item``, ``tensors(item)``
    yields its (name, tensor) pairs in ``item.names()`` order."""

    def holds(self, item: Item) -> bool:
        raise NotImplementedError

    def tensors(self, item: Item) -> Iterator[tuple[str, torch.Tensor]]:
        raise NotImplementedError


class CheckpointSource(Source):
    """The output made from the checkpoint: quantized layers, other tensors cast to ``dtype``, buffers the
    model makes itself. Holds every item."""

    def __init__(self, plan: Plan, reader: Reader, dtype: torch.dtype) -> None:
        self.plan, self.reader, self.dtype = plan, reader, dtype

    def holds(self, item: Item) -> bool:
        return True

    def tensors(self, item: Item) -> Iterator[tuple[str, torch.Tensor]]:
        if item.layer is not None:
            yield from self._quantized(item)
        elif item.key is None:  # made by the model itself (a persistent buffer the checkpoint lacks)
            yield item.name, item.old.detach().to("cpu").contiguous()
        else:
            tensor = converted(item.old, self.reader(item.key), self.dtype, item.key)
            yield item.name, tensor.clone(memory_format=torch.contiguous_format)  # owned, not a view of the file
            del tensor

    def _quantized(self, item: Item) -> Iterator[tuple[str, torch.Tensor]]:
        layer, quantizer = item.layer, self.plan.quantizer
        parts = quantize_weight(quantizer, layer, item.name, item.key, self.reader(item.key))
        if set(parts) != set(layer.tensor_names()):
            raise FormatError(f"{item.name}: method {quantizer.config.method!r} made tensors {sorted(parts)}; expected "
                              f"{layer.tensor_names()} of {layer.fmt.describe()}; this is a bug in the method")
        for name, attr in zip(item.names(), layer.tensor_names()):  # layout order, as saving a loaded model writes
            yield name, parts.pop(attr).contiguous()


class StoredSource(Source):
    """Output tensors made already, in safetensors files (e.g. the calibration runner's finished blocks), by name.
    A context manager: leaving it closes the files."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = [safe_open(str(p), "pt", device="cpu").__enter__() for p in files]
        self.where = {k: f for f in self.files for k in f.keys()}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        for f in self.files:
            f.__exit__(None, None, None)
        self.files.clear()

    def holds(self, item: Item) -> bool:
        return item.names()[0] in self.where

    def tensors(self, item: Item) -> Iterator[tuple[str, torch.Tensor]]:
        for name in item.names():
            yield name, self.where[name].get_tensor(name)


def output_tensors(plan: Plan, dtype: torch.dtype, *, clamp: bool = False, progress: bool = False,
                   over: Sequence[Source] = ()) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the quantized model in ``plan.items`` order, one source tensor at a time, from the first
    of ``over`` that holds each item, else from the checkpoint. At the end the tensors not written are checked
    (NaN/Inf, a tied head equal to the embedding) and the quantization config, with per-layer fallbacks, is
    attached to ``plan.model.config`` for writing."""
    # the bar counts the output's items, whichever source gives them (counting checkpoint reads would leave it
    # frozen at the few tensors outside the finished blocks of ``over``)
    bar = tqdm(total=len(plan.items), desc="writing" if over else "quantizing", unit="item", disable=not progress)
    with Reader(plan.ckpt, clamp=clamp) as reader, bar:
        sources = [*over, CheckpointSource(plan, reader, dtype)]
        for item in plan.items:
            yield from next(s for s in sources if s.holds(item)).tensors(item)
            bar.update()
            release_freed_memory()
        for key in plan.rest:
            reader(key)  # NaN/Inf in any tensor is an error, as when loading
        check_tied_head(plan, reader)
    warn_clamped(reader.clamped, stacklevel=5)
    attach(plan.model, plan.quantizer)
