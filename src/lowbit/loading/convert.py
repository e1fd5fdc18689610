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

from pathlib import Path

import torch

from lowbit.config import QuantConfig
from lowbit.errors import ConfigError
from lowbit.loading.checkpoint import open_checkpoint
from lowbit.loading.engine import prepare
from lowbit.loading.plan import Plan
from lowbit.loading.reader import clamp_nonfinite
from lowbit.loading.resolve import resolve_quantization
from lowbit.loading.save import check_output, shard_limit, write_folder
from lowbit.loading.stream import output_tensors
from lowbit.quantizer import Quantizer


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
    clamp = clamp_nonfinite(nonfinite)
    limit = shard_limit(max_shard_size, max_memory)
    check_output(out, overwrite, src)  # before any work, not after
    ckpt = open_checkpoint(src)
    if ckpt.quantization_config is not None:
        raise ConfigError(f"{ckpt.path} is already quantized (config.json has a quantization_config); expected a "
                          "full-precision checkpoint; quantize the original weights, or load this one as it is")
    if quantization is None:
        raise ConfigError("quantization=None; expected a method name or lowbit.config(...) to quantize with")
    cfg = resolve_quantization(None, quantization)[0]
    job = prepare(ckpt, cfg, dtype=dtype, saving=True, tie=True, pre_quantized=False)
    plan = Plan(job.model, ckpt, job.quantizer, output=True)  # a missing or unexpected tensor fails here, not later
    tensors = output_tensors(plan, job.dtype, clamp=clamp, progress=progress)
    return write_folder(out, tensors, limit, job.model, ckpt.path, overwrite=overwrite), job.quantizer
