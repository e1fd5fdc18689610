"""``lowbit.verify``: a folder's shards against the hashes of its index, and its tensors against its config.

The hashes (``checkpoint.verify_checkpoint``) say that the files are the ones saved, and that the index lists every
shard in the folder; the skeleton, built on meta as loading builds it, says that the shards hold every tensor the
config implies, so a folder with an empty or partial weight_map never passes.
"""

from __future__ import annotations

from pathlib import Path

from lowbit.loading.checkpoint import open_checkpoint, verify_checkpoint
from lowbit.loading.engine import prepare
from lowbit.loading.plan import Plan
from lowbit.loading.resolve import resolve_quantization
from lowbit.loading.tensors import missing_error


def verify_folder(path: str | Path) -> dict[str, str]:
    """Check the shard hashes and that the shards hold every tensor the config implies; returns shard → hash."""
    hashes = verify_checkpoint(path)
    ckpt = open_checkpoint(path)
    cfg, pre_quantized, layers = resolve_quantization(ckpt.quantization_config, None)
    job = prepare(ckpt, cfg, layers=layers, tie=True, pre_quantized=pre_quantized)
    plan = Plan(job.model, ckpt, job.quantizer)
    names: dict[int, list[str]] = {}
    for name, tensor in job.model.state_dict(keep_vars=True).items():
        if tensor is not None and tensor.device.type == "meta":  # what loading must fill from the files
            names.setdefault(id(tensor), []).append(name)
    missing = [group[0] for group in names.values() if not any(n in plan.source for n in group)]
    if missing:
        raise missing_error(ckpt, missing)
    return hashes
