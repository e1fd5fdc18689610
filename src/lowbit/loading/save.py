"""``lowbit.save_pretrained``: canonical tensors in safetensors shards, hashes in the index, atomic swap.

Shards are written to ``.OUT.tmp-<token>`` beside the target (a token unique to the save, with a lock file
naming its holder: :mod:`lowbit.loading.folder_lock`); when complete, every file is flushed to the disk, an
existing target is renamed to ``.OUT.old-<token>``, the temporary folder takes the target's name, the old
folder's entries that lowbit does not write move into the new one and the rest is removed
(:mod:`lowbit.loading.output_folder`). A crash or a power loss at any point leaves the old or the new model
whole; leftovers of saves that are provably gone are finished or removed next time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import types
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lowbit._version import __version__
from lowbit.errors import LowbitError, SaveError
from lowbit.loading.checkpoint import INDEX_NAME, file_sha256, safe_file
from lowbit.loading.folder_lock import Claim
from lowbit.loading.output_folder import absolute, check_output, clean_leftovers, fsync_path, swap
from lowbit.loading.tokenizer import TOKENIZER_FILES
from lowbit.quantizer import Quantizer



def parse_size(size: int | str, what: str = "max_shard_size") -> int:
    """Bytes of ``size`` (an int, or '2GB', '500MB', '1GiB'); ``what`` names the argument in errors."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", str(size), re.IGNORECASE)
    if not m:
        raise SaveError(f"{what}={size!r} is not a size; expected bytes or a string like '2GB' or '500MB'")
    unit = m.group(2).upper()
    base = 1024 if "I" in unit else 1000
    nbytes = int(float(m.group(1)) * base ** {"K": 1, "M": 2, "G": 3}[unit[0]])
    if nbytes < 1:
        raise SaveError(f"{what}={size!r} is less than one byte; expected a positive size like '2GB'")
    return nbytes


def shard_limit(max_shard_size: int | str, max_memory: int | str | None) -> int:
    """Bytes of tensors the writer buffers before writing a shard: ``max_shard_size``, at most max_memory / 3."""
    limit = parse_size(max_shard_size)
    if max_memory is None:
        return limit
    return max(1, min(limit, parse_size(max_memory, "max_memory") // 3))


def save_pretrained(model: nn.Module, out: str | Path, max_shard_size: int | str = "2GB", *, overwrite: bool = False,
                    tokenizer_from: str | Path | None = None, progress: bool = False) -> Path:
    """Write ``model`` (quantized or not) to ``out`` atomically; returns the folder. ``progress``: a bar over the
    modules written."""
    from tqdm.auto import tqdm

    quantizer = getattr(model, "lowbit_quantizer", None)
    if quantizer is not None:
        check_serializable(quantizer)
    limit = parse_size(max_shard_size)
    with tqdm(total=sum(1 for _ in model.modules()), desc="saving", unit="module", disable=not progress) as bar:
        return write_folder(out, _tensors(model, bar.update), limit, model,
                            tokenizer_from or getattr(model, "lowbit_source", None), overwrite=overwrite)


def check_serializable(quantizer: Quantizer) -> None:
    if not quantizer.is_serializable:
        raise SaveError(f"method {quantizer.config.method!r} cannot be saved; keep the full-precision checkpoint and "
                        "quantize on load instead")


def attach(model: nn.Module, quantizer: Quantizer) -> None:
    """Record the quantization on the model so saving writes it; route ``model.save_pretrained`` to lowbit."""
    qc = quantizer.config.to_dict()
    if quantizer.layers:
        qc["layers"] = {k: dict(v) for k, v in sorted(quantizer.layers.items())}
    model.config.quantization_config = qc
    model.lowbit_quantizer = quantizer
    model.save_pretrained = types.MethodType(lambda self, out, **kw: save_pretrained(self, out, **kw), model)


def detach(model: nn.Module) -> None:
    """Undo ``attach``: the model no longer records a lowbit quantization (``save_pretrained`` is the model's own)."""
    model.__dict__.pop("lowbit_quantizer", None)
    model.__dict__.pop("save_pretrained", None)


def write_folder(out: str | Path, tensors: Iterable[tuple[str, torch.Tensor]], limit: int, source: nn.Module,
                 tokenizer_from: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Write ``tensors`` in shards of at most ``limit`` bytes, with ``source``'s config (and generation
    config) and the tokenizer files of ``tokenizer_from``, to ``out`` atomically; returns the folder.

    ``tensors`` is consumed before config.json is written, so an iterator may still complete
    ``source.config`` at its end, or raise to leave nothing behind."""
    check_output(out, overwrite, tokenizer_from)
    out = absolute(out)
    clean_leftovers(out)
    claim = Claim(out)
    tmp = claim.path("tmp")
    try:
        tmp.mkdir()
        _write(tensors, tmp, limit, tokenizer_from)
        _write_config(source, tmp)
        swap(tmp, out, claim)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_error(e):
            raise save_error(e, out) from None
        raise
    finally:
        claim.release()
    return out


def is_disk_error(e: BaseException) -> bool:
    """An error of the disk (full, quota, I/O) rather than of lowbit or of the input."""
    return not isinstance(e, LowbitError) and (isinstance(e, OSError) or type(e).__name__ == "SafetensorError")


def save_error(e: BaseException, out: Path, what: str = "nothing was changed there") -> SaveError:
    """One line for a disk error ``e`` met while writing ``out``; ``disk`` set on it tells callers what it was."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0]
    error = SaveError(f"writing {str(out)!r} failed ({reason}); {what}; free some space or choose another output folder")
    error.disk = True
    return error


def _tensors(model: nn.Module, done=lambda: None):
    """(name, tensor) of the canonical state, module by module, each storage once.

    One module's tensors at a time: a layer whose kernel holds the only copy rebuilds its canonical
    tensors here, and they are written and dropped before the next layer rebuilds its own.
    """
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()] if t.device.type != "meta"}
    seen: set[tuple] = set()
    for prefix, module in model.named_modules():
        local: dict[str, torch.Tensor] = {}
        module._save_to_state_dict(local, f"{prefix}." if prefix else "", False)
        for name, tensor in local.items():
            if tensor is None:
                continue
            if tensor.device.type == "meta":
                raise SaveError(f"{name} is still on the meta device; load the model fully before saving")
            ptr = tensor.untyped_storage().data_ptr()
            key = (tensor.device, ptr, tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
            if ptr in owned:  # rebuilt tensors are fresh: only the model's own storages can be shared
                if key in seen:
                    continue  # tied weights are tied again on load
                seen.add(key)
            tensor = tensor.detach().to("cpu").contiguous()
            if tensor.untyped_storage().nbytes() > tensor.nbytes:  # a view (fused layers' rows): own the bytes
                tensor = tensor.clone()
            yield name, tensor
        done()


def _write(tensors: Iterable[tuple[str, torch.Tensor]], tmp: Path, limit: int,
           tokenizer_from: str | Path | None) -> None:
    """Shards of at most ``limit`` bytes of tensors (a larger tensor gets one of its own), the index with
    their sha256, and the tokenizer files."""
    parts: list[tuple[Path, list[str], str]] = []
    shard: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        path = tmp / f"part-{len(parts) + 1:05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        os.chmod(path, 0o666 & ~_umask())  # safetensors writes 0600; give shards the usual mode
        fsync_path(path)
        parts.append((path, list(shard), file_sha256(path)))
        shard.clear()

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > limit:
            flush()
            size = 0
        shard[name] = tensor
        size += nbytes
        total += nbytes
    if shard or not parts:
        flush()
    weight_map, hashes = {}, {}
    for i, (path, names, digest) in enumerate(parts):
        final = "model.safetensors" if len(parts) == 1 else f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        os.replace(path, tmp / final)
        hashes[final] = digest
        weight_map.update({k: final for k in names})
    index = {"metadata": {"total_size": total, "lowbit_version": __version__, "sha256": hashes}, "weight_map": weight_map}
    (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True, allow_nan=False))
    if tokenizer_from:
        for fname in TOKENIZER_FILES:
            src = safe_file(Path(tokenizer_from), fname)  # a regular file inside the folder, or an error
            if src is not None:
                shutil.copyfile(src, tmp / fname)


def _write_config(source: nn.Module, tmp: Path) -> None:
    """config.json, and generation_config.json for a model that generates, of ``source``."""
    source.config.save_pretrained(str(tmp))
    gen = getattr(source, "generation_config", None)
    if gen is not None and getattr(source, "can_generate", lambda: False)():
        gen.save_pretrained(str(tmp))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
