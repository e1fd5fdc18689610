"""Checkpoint folders: find and check config.json and the safetensors shards before anything loads.

Everything here raises :class:`CheckpointError` with a one-line message; nothing runs code from the
checkpoint and no pickle is ever read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowbit.errors import CheckpointError
from lowbit.loading.tokenizer import TOKENIZER_FILES

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "tf_model.h5", "model.ckpt.index")
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E8M0": 1, "F4": 1}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
MAX_HEADER = 100 * 1024 * 1024
MAX_JSON = 64 * 1024 * 1024  # config.json, the shard index and other JSON files of a folder
MAX_DEPTH = 64  # nesting of a JSON file's objects and lists


@dataclasses.dataclass
class Checkpoint:
    path: Path
    config: dict
    weight_map: dict[str, str]  # tensor name → shard file name
    index: dict | None  # the index file's content, if any
    shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # tensor name → shape, from the headers

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    @property
    def quantization_config(self) -> dict | None:
        return self.config.get("quantization_config")


def safe_file(folder: Path, name: str) -> Path | None:
    """``folder / name`` if it is a regular file inside ``folder`` (a symbolic link may point inside it, or into
    the same Hugging Face cache repository's ``blobs``), None if it does not exist; else a CheckpointError: a
    link leaving the folder, a FIFO, a device node or a folder is never opened."""
    path = folder / name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise CheckpointError(f"{str(path)!r} is a broken symbolic link; expected a regular file; "
                                  "replace it by the file itself") from None
        return None
    except OSError as e:
        raise CheckpointError(f"cannot read {str(path)!r} ({e.strerror}); check the file's permissions") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a special file"
        raise CheckpointError(f"{str(path)!r} is {kind}; expected a regular file; replace it by the file itself")
    if os.path.islink(path):
        real, root = os.path.realpath(path), os.path.realpath(folder)
        repo = os.path.dirname(os.path.dirname(root)) if os.path.basename(os.path.dirname(root)) == "snapshots" else None
        if not (real.startswith(root + os.sep) or (repo and real.startswith(os.path.join(repo, "blobs") + os.sep))):
            raise CheckpointError(f"{str(path)!r} is a symbolic link to {real!r}, outside the model folder; expected "
                                  "a regular file inside it; replace the link by the file itself")
    return path


def _depth(data: Any) -> int:
    """How deeply ``data`` (parsed JSON) nests objects and lists, counted without recursion."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(raw: bytes | str, where: str, what: str) -> Any:
    """``raw`` as JSON, at most MAX_DEPTH deep, or a CheckpointError naming ``where`` (already quoted)."""
    try:
        data = json.loads(raw)
    except RecursionError:
        data = None
        deep = True
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where} is not valid JSON ({e}); expected the {what}; re-download or re-save it") from None
    else:
        deep = _depth(data) > MAX_DEPTH
    if deep:
        raise CheckpointError(f"{where} nests JSON more than {MAX_DEPTH} levels deep; expected the {what}; "
                              "the file is damaged or malicious: re-download or re-save it")
    return data


def read_json(path: Path, what: str) -> dict:
    found = safe_file(path.parent, path.name)
    if found is None:
        raise CheckpointError(f"{str(path)!r} is missing; expected the {what} of the checkpoint; re-download or re-save it")
    size = found.stat().st_size
    if size > MAX_JSON:
        raise CheckpointError(f"{str(path)!r} is {size} bytes; expected the {what} within {MAX_JSON} bytes; "
                              "the file is damaged: re-download or re-save it")
    with open(found, "rb") as f:
        data = parse_json(f.read(MAX_JSON + 1), repr(str(path)), what)
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r} holds a JSON {type(data).__name__}; expected an object ({what})")
    return data


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Check the folder, config.json and every shard's header; return what to load."""
    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"model folder {str(folder)!r} does not exist; expected a folder with config.json and "
                              "*.safetensors; check the path")
    if not folder.is_dir():
        raise CheckpointError(f"{str(folder)!r} is a file; expected a model folder with config.json and *.safetensors; "
                              "pass the folder that contains it")
    if safe_file(folder, "config.json") is None:
        raise CheckpointError(f"{str(folder)!r} has no config.json; expected a Hugging Face model folder; "
                              "point at the folder that holds config.json")
    config = read_json(folder / "config.json", "model config")
    qc = config.get("quantization_config")
    if qc is not None and not isinstance(qc, dict):
        raise CheckpointError(f"{str(folder / 'config.json')!r} has quantization_config={_short(qc)}; expected an object "
                              "such as {\"quant_method\": \"lowbit\", ...} or none; fix config.json")
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise CheckpointError(f"{folder / 'config.json'} has architectures={archs!r}; expected a list naming the model "
                              "class, e.g. [\"LlamaForCausalLM\"]; add it to config.json")
    for name in TOKENIZER_FILES:
        safe_file(folder, name)  # read or copied later: a link out of the folder or a FIFO is refused now
    if safe_file(folder, INDEX_NAME) is not None:
        index = read_json(folder / INDEX_NAME, "shard index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{folder / INDEX_NAME} has no valid weight_map; expected tensor → shard file names; "
                                  "re-save the checkpoint")
        for shard in sorted(set(weight_map.values())):
            _check_shard_name(folder, shard)
            if safe_file(folder, shard) is None:
                raise CheckpointError(f"shard {shard!r} is listed in {INDEX_NAME} but missing from {folder}; "
                                      "re-download the checkpoint")
    elif safe_file(folder, SINGLE_NAME) is not None:
        index, weight_map = None, None
    else:
        pickles = [n for n in PICKLE_NAMES if (folder / n).exists()]
        if pickles:
            raise CheckpointError(f"{folder} holds {pickles[0]} (a pickle checkpoint), which lowbit refuses to read since "
                                  "unpickling can run code; convert it to safetensors first, e.g. in a trusted env: "
                                  "transformers' model.save_pretrained(dir, safe_serialization=True)")
        raise CheckpointError(f"{folder} has no {SINGLE_NAME} or {INDEX_NAME}; expected safetensors weights; "
                              "re-download or re-save the checkpoint")
    headers = {}
    for shard in sorted(set(weight_map.values())) if weight_map else [SINGLE_NAME]:
        headers[shard] = read_header(folder / shard)
    if weight_map is None:
        weight_map = {name: SINGLE_NAME for name in headers[SINGLE_NAME]}
    for name, shard in weight_map.items():
        if name not in headers[shard]:
            raise CheckpointError(f"tensor {name!r} is listed in {INDEX_NAME} for {shard} but the shard does not hold it; "
                                  "re-download the checkpoint")
    shapes = {name: headers[shard][name]["shape"] for name, shard in weight_map.items()}
    return Checkpoint(folder, config, weight_map, index, shapes)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_shard_name(folder: Path, shard: str) -> None:
    if not _SAFE_NAME.match(shard) or shard in (".", ".."):
        raise CheckpointError(f"shard name {shard!r} in {folder / INDEX_NAME} is not a plain file name; expected e.g. "
                              "model-00001-of-00002.safetensors; the index may be malicious or damaged")


def read_header(path: Path) -> dict[str, dict]:
    """Parse and check a safetensors header: sizes, offsets and dtypes must agree with the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is {size} bytes, too short for a safetensors file; re-download it")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_HEADER):
                raise CheckpointError(f"{path} declares a {n}-byte header but the file has {size} bytes; "
                                      "the file is truncated or not safetensors; re-download it")
            raw = f.read(n)
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}; check the file's permissions") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} has a header that is not JSON; expected a safetensors file; re-download it") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a header that is not a JSON object; expected a safetensors file")
    header.pop("__metadata__", None)
    body = size - 8 - n
    for name, info in header.items():
        dtype, shape, start, stop, nbytes = _entry(path, name, info)
        if not (0 <= start <= stop <= body) or stop - start != nbytes:
            raise CheckpointError(f"{path}: tensor {name!r} ({dtype} {shape}) needs {nbytes} bytes but its offsets "
                                  f"[{start}, {stop}] do not fit the {body}-byte body; the file is truncated or damaged")
    return header


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(path: Path, name: str, info: Any) -> tuple[str, list[int], int, int, int]:
    """(dtype, shape, start, stop, nbytes) of one header entry, every field type-checked."""
    ok = isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list) \
        and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
    ok = ok and (info["dtype"] in _DTYPE_SIZES or info["dtype"] == "F4")
    ok = ok and all(_is_int(d) and d >= 0 for d in info["shape"]) and all(_is_int(o) for o in info["data_offsets"])
    if not ok:
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info!r}; expected dtype, shape "
                              "and data_offsets of a safetensors file; re-download the file")
    numel = math.prod(info["shape"])
    nbytes = numel * _DTYPE_SIZES[info["dtype"]] if info["dtype"] != "F4" else (numel + 1) // 2
    return info["dtype"], info["shape"], info["data_offsets"][0], info["data_offsets"][1], nbytes


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn safetensors' own errors for a damaged file into a CheckpointError naming it."""
    try:
        yield
    except (CheckpointError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"cannot read {path}: {e}; re-download or re-save the checkpoint") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checkpoint(path: str | Path) -> dict[str, str]:
    """Check that the index lists every shard in the folder and every shard against the sha256 the index records;
    returns shard → hash."""
    ckpt = open_checkpoint(path)
    meta = (ckpt.index or {}).get("metadata")
    hashes = meta.get("sha256") if isinstance(meta, dict) else None
    if not isinstance(hashes, dict) or not hashes:
        raise CheckpointError(f"{str(ckpt.path)!r} records no shard hashes; expected a folder saved by "
                              "lowbit.save_pretrained; re-save it with lowbit to add them")
    unlisted = sorted(p.name for p in ckpt.path.glob("*.safetensors") if p.name not in ckpt.shards)
    if unlisted:
        raise CheckpointError(f"shard {unlisted[0]!r} is in {str(ckpt.path)!r} but not in {INDEX_NAME}'s weight_map "
                              f"({len(unlisted)} such); expected the index to list every shard; re-save the model")
    for shard in ckpt.shards:
        digest = hashes.get(shard)
        if not isinstance(digest, str):
            raise CheckpointError(f"shard {shard!r} has recorded hash {digest!r} in {INDEX_NAME}; expected a sha256 hex "
                                  "string; re-save the model with lowbit")
        actual = file_sha256(ckpt.path / shard)
        if actual != digest:
            raise CheckpointError(f"{str(ckpt.path / shard)!r} has sha256 {actual[:12]}…, expected {digest[:12]!r}… "
                                  "from the index: the file was changed or damaged; re-save or re-download it")
    return {s: hashes[s] for s in ckpt.shards}
