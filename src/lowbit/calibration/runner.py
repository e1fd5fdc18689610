"""``lowbit.quantize_calibrated``: the layer-by-layer runner (ARCHITECTURE.md §2).

The model's blocks are never all in memory. The embeddings run once over the calibration samples to
capture what block 0 receives; then, for each block in turn: its full-precision weights are read from the
checkpoint, the method quantizes it on its inputs, the quantized block computes the next block's inputs,
and its tensors (packed weights and anything the method changed) are written to a work folder beside the
output, ``.OUT.calib``, together with the next block's inputs. A run that stops (Ctrl-C, a crash) restarts
at the block it was working on, from what that folder holds. At the end the output folder is written
atomically, as ``quantize_folder`` writes it, and the work folder removed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from lowbit.calibration.data import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, calibration_samples, read_calibration_text
from lowbit.archs import find_blocks
from lowbit.calibration.inputs import BlockInputs, Reference, capture
from lowbit.calibration.method import CalibratedQuantizer
from lowbit.config import QuantConfig
from lowbit.errors import ConfigError, FormatError
from lowbit.loading.checkpoint import Checkpoint, open_checkpoint
from lowbit.loading.engine import prepare, resolve_device
from lowbit.loading.plan import Plan
from lowbit.loading.reader import Reader
from lowbit.loading.resolve import resolve_quantization
from lowbit.loading.folder_lock import Claim, abandoned, side_entries
from lowbit.loading.output_folder import absolute, check_output
from lowbit.loading.save import is_disk_error, save_error, shard_limit, write_folder
from lowbit.loading.skeleton import build_skeleton
from lowbit.loading.stream import StoredSource, output_tensors
from lowbit.loading.tokenizer import load_tokenizer
from lowbit.nn.holder import QuantHolder
from lowbit.registry import get
from lowbit.utils import release_freed_memory

STATE = "state.json"


def quantize_calibrated(src: str | Path, out: str | Path, quantization: QuantConfig | str, *,
                        calib: str | Path | None = None, text: str | None = None, ids: torch.Tensor | None = None,
                        samples: int = DEFAULT_SAMPLES,
                        seq_len: int = DEFAULT_SEQ_LEN, seed: int = 0, batch_size: int = 8,
                        device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                        max_shard_size: int | str = "2GB", max_memory: int | str | None = None,
                        overwrite: bool = False, progress: bool = False, log=None) -> tuple[Path, CalibratedQuantizer]:
    """Quantize ``src`` into ``out`` with a calibrated method (gptq, awq, smoothquant), block by block.

    Calibration text from ``calib`` (a UTF-8 file) or ``text``; ``samples`` windows of ``seq_len`` tokens chosen
    with ``seed``, run ``batch_size`` at a time on ``device``. ``ids`` ([samples, seq_len] token ids) replaces
    the text, for a dataset tokenized elsewhere. Returns the folder and the quantizer (its
    ``summary()``). ``log(str)``, if given, receives one line per block. ``max_memory`` caps the shard being
    written at a third of it, as ``quantize_folder`` does; the blocks themselves are always one at a time.
    """
    check_output(out, overwrite, src)
    shard_limit(max_shard_size, max_memory)  # a bad size fails before any work
    out = Path(out)
    ckpt = open_checkpoint(src)
    if ckpt.quantization_config is not None:
        raise ConfigError(f"{ckpt.path} is already quantized; expected a full-precision checkpoint to calibrate")
    cfg = resolve_quantization(None, quantization)[0]
    cls = get(cfg.method).quantizer_cls
    if not issubclass(cls, CalibratedQuantizer):
        raise ConfigError(f"method {cfg.method!r} needs no calibration data; run `lowbit quantize` without --calib")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is invalid; expected an int >= 1")
    if text is None and ids is None:
        from lowbit.data import text_path

        text = read_calibration_text(calib or text_path("wiki.calib.txt"))
    device = resolve_device(device)
    job = prepare(ckpt, cfg, device=device, dtype=dtype, tie=True, calibrated=True)  # what is written: packed shells
    quantizer, dtype, qmodel = job.quantizer, job.dtype, job.model
    work_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    if ids is None:
        ids = calibration_samples(load_tokenizer(ckpt.path), text, samples, seq_len, seed)
    elif not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
        raise ConfigError(f"ids={type(ids).__name__} {getattr(ids, 'shape', '')}; expected a [samples, seq_len] "
                          "torch.long tensor of token ids")

    plan = Plan(qmodel, ckpt, quantizer, output=True)  # a missing or unexpected tensor fails here, before any work
    model = build_skeleton(ckpt.path, ckpt.config, work_dtype)  # what runs: full precision, one block at a time
    prefix, blocks = find_blocks(model)
    quantizer.model_type = getattr(model.config, "model_type", None)
    source = plan.source  # model name → checkpoint key
    _load_outside(model, ckpt, source, prefix, device)

    work = _Work(out, _fingerprint(ckpt, cfg, ids))
    with work.guard():
        start, hidden, ref = work.resume(len(blocks), device)
        hidden0, calls = capture(model, blocks, list(ids.split(batch_size)), device)
        _free(model)  # the embeddings and everything else outside the blocks are not needed any more
        release_freed_memory()
        if log is not None:
            log(f"captured {ids.shape[0]} x {ids.shape[1]} tokens; starting at block {start} of {len(blocks)}")
        hidden = hidden if hidden is not None else hidden0
        ref = (ref if ref is not None else hidden0) if quantizer.wants_reference else None  # the fp model's stream
        del hidden0
        bar = tqdm(total=len(blocks), initial=start, desc=f"{cfg.method} blocks", unit="block", disable=not progress)
        for i in range(start, len(blocks)):
            t0 = time.perf_counter()
            name = f"{prefix}.{i}"
            block = blocks[i]
            _load_block(block, name, ckpt, source, device, work_dtype)
            inputs = BlockInputs(hidden, calls[i])
            reference = None if ref is None else Reference(copy.deepcopy(block), BlockInputs(ref, calls[i]))
            stored = quantizer.calibrate_block(block, name, inputs, reference)
            hidden = inputs.run(block)  # the quantized block's outputs feed the next block
            if reference is not None:
                ref = reference.inputs.run(reference.block)
            work.save_block(i, _block_tensors(qmodel, block, name, stored, dtype), hidden, ref)
            _free(block)
            del inputs, stored, reference
            release_freed_memory()
            bar.update()
            if log is not None:
                log(f"block {i}: {time.perf_counter() - t0:.1f} s")
        bar.close()
        del hidden, ref, calls, model
        with work.store() as done:  # the finished blocks, laid over the checkpoint
            tensors = output_tensors(plan, dtype, progress=progress, over=[done])
            folder = write_folder(out, tensors, shard_limit(max_shard_size, max_memory), qmodel, ckpt.path, overwrite=overwrite)
    work.remove()
    return folder, quantizer


def _load_outside(model: nn.Module, ckpt: Checkpoint, source: dict[str, str], prefix: str, device) -> None:
    """Load every tensor outside the blocks (embeddings, final norm, rotary buffers) except an untied head."""
    head = model.get_output_embeddings()
    tied = getattr(model.config, "tie_word_embeddings", False)
    skip = {id(head.weight)} if head is not None and not tied else set()
    with Reader(ckpt) as read:
        for name, p in list(model.named_parameters()):
            if name.startswith(prefix + ".") or id(p) in skip or name not in source:
                continue
            _set(model, name, read(source[name]).to(device, p.dtype))
    if tied:
        model.tie_weights()


def _load_block(block: nn.Module, name: str, ckpt: Checkpoint, source: dict[str, str], device, dtype) -> None:
    with Reader(ckpt) as read:
        for local, p in list(block.named_parameters()):
            _set(block, local, read(source[f"{name}.{local}"]).to(device, dtype))


def _set(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = root.get_submodule(module_name) if module_name else root
    module._parameters[attr] = nn.Parameter(tensor.contiguous(), requires_grad=False)


def _free(block: nn.Module) -> None:
    for module in block.modules():
        for attr, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[attr] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)


def _block_tensors(qmodel: nn.Module, block: nn.Module, name: str, stored: dict[str, dict[str, torch.Tensor]],
                   dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The block's tensors as the output stores them: packed parts of its quantized layers, the rest (norms,
    biases, possibly rescaled by the method) in the output dtype."""
    out: dict[str, torch.Tensor] = {}
    local_state = block.state_dict()
    for local, module in qmodel.get_submodule(name).named_modules():
        full = f"{name}.{local}" if local else name
        own = {}
        module._save_to_state_dict(own, "", True)
        if isinstance(module, QuantHolder) and full not in stored:
            raise FormatError(f"the calibrated method left {full} unquantized; this is a bug in the method")
        parts = stored.get(full, {})
        if parts and set(parts) != set(module.tensor_names()):
            raise FormatError(f"{full}: the method made tensors {sorted(parts)}; expected {module.tensor_names()}; "
                              "this is a bug in the method")
        for attr in own:
            key = f"{local}.{attr}" if local else attr
            tensor = parts[attr] if attr in parts else local_state[key]
            if tensor.is_floating_point() and attr not in parts:
                tensor = tensor.to(dtype)
            out[f"{name}.{key}"] = tensor.detach().to("cpu").contiguous()
    return out


def _fingerprint(ckpt: Checkpoint, cfg: QuantConfig, ids: torch.Tensor) -> str:
    """What a resumed run must share with the one it continues: the source, the config and the samples."""
    h = hashlib.sha256(json.dumps([str(ckpt.path.resolve()), cfg.to_dict()], sort_keys=True).encode())
    h.update(ids.numpy().tobytes())
    for shard in sorted(set(ckpt.weight_map.values())):
        st = (ckpt.path / shard).stat()
        h.update(f"{shard}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


class _Work:
    """The work folder ``.OUT.calib-<token>``: one safetensors file per finished block, the inputs of the next block,
    and state.json (fingerprint, next block), each replaced atomically. The token and its lock file
    (:class:`~lowbit.loading.folder_lock.Claim`) keep two runs to one output apart; a run takes over the work
    folder of a provably abandoned run with the same fingerprint, and removes those of other settings."""

    def __init__(self, out: Path, fingerprint: str) -> None:
        self.out, self.fingerprint = absolute(out), fingerprint
        self.claim = Claim(self.out)
        self.dir = self.claim.path("calib")

    def resume(self, n_blocks: int, device) -> tuple[int, list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """(first block to run, its inputs, the full-precision model's inputs to it where kept) from an earlier run
        of the same work, else (0, None, None)."""
        for entries in side_entries(self.out).values():
            if "calib" not in entries or "lock" not in entries or not abandoned(entries["lock"]):
                continue
            state = _state(entries["calib"])
            if not self.dir.exists() and state is not None and state.get("fingerprint") == self.fingerprint:
                with contextlib.suppress(FileNotFoundError):  # another run took it first
                    os.rename(entries["calib"], self.dir)
            shutil.rmtree(entries["calib"], ignore_errors=True)
            entries["lock"].unlink(missing_ok=True)
        state = _state(self.dir)
        if state is None or state.get("fingerprint") != self.fingerprint:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir()
            self._write_state(0)
            return 0, None, None
        start = int(state["next_block"])
        if start == 0 or start > n_blocks:
            return 0, None, None
        ref = self.dir / f"reference-{start}.safetensors"
        return start, _load_list(self.dir / f"inputs-{start}.safetensors", device), \
            _load_list(ref, device) if ref.exists() else None

    def save_block(self, i: int, tensors: dict[str, torch.Tensor], hidden: list[torch.Tensor],
                   ref: list[torch.Tensor] | None = None) -> None:
        _save(tensors, self.dir / f"block-{i}.safetensors")
        _save(_as_dict(hidden), self.dir / f"inputs-{i + 1}.safetensors")
        if ref is not None:
            _save(_as_dict(ref), self.dir / f"reference-{i + 1}.safetensors")
        self._write_state(i + 1)
        (self.dir / f"inputs-{i}.safetensors").unlink(missing_ok=True)
        (self.dir / f"reference-{i}.safetensors").unlink(missing_ok=True)

    def store(self) -> StoredSource:
        """The finished blocks' tensors by name, read from the work folder when the output is written."""
        return StoredSource(sorted(self.dir.glob("block-*.safetensors")))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.claim.release()

    @contextlib.contextmanager
    def guard(self):
        """A disk error removes the work folder (it would only fill the disk further) and becomes one line; any
        other stop (Ctrl-C, a crash) leaves it for the next run to resume."""
        try:
            yield
        except BaseException as e:
            if is_disk_error(e) or getattr(e, "disk", False):
                self.remove()
                if is_disk_error(e):
                    raise save_error(e, self.out, f"the work folder {self.dir.name!r} was removed") from None
            else:
                self.claim.leave()
            raise

    def _write_state(self, next_block: int) -> None:
        tmp = self.dir / (STATE + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "next_block": next_block}))
        os.replace(tmp, self.dir / STATE)


def _state(folder: Path) -> dict | None:
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _as_dict(batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {str(j): h.detach().to("cpu").contiguous() for j, h in enumerate(batches)}


def _load_list(path: Path, device) -> list[torch.Tensor]:
    with safe_open(str(path), "pt", device="cpu") as f:
        return [f.get_tensor(str(i)).to(device) for i in range(len(f.keys()))]


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
