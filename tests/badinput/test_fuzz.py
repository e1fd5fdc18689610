"""Mutation fuzzing of saved checkpoints: every damaged copy must load exactly as the original or raise a
``lowbit.errors`` exception — never another exception, a crash in native code or a hang. Flipped data bytes must
be caught by ``verify=True`` through the shard hashes.

Cases run in this process, seeded; ``LOWBIT_FUZZ_CASES`` (default 150 per kind) asks for more.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path

import helpers
import pytest
import torch

import lowbit
from lowbit.errors import CheckpointError, LowbitError

CASES = int(os.environ.get("LOWBIT_FUZZ_CASES", "150"))
SECONDS_PER_CASE = 20


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A two-shard int4 folder with hashes, and its state dict as loaded."""
    base = tmp_path_factory.mktemp("fuzz")
    model = lowbit.from_pretrained(helpers.make_llama(base / "src"), quantization=lowbit.config("int4", group_size=32))
    out = lowbit.save_pretrained(model, base / "q", max_shard_size="60KB")
    assert len(list(out.glob("*.safetensors"))) >= 2
    return out, _state(lowbit.from_pretrained(out))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check(folder: Path, original: dict[str, torch.Tensor], what: str, verify: bool = False) -> str:
    """'error' or 'same'; anything else fails the test naming the mutation."""
    try:
        with helpers.deadline(SECONDS_PER_CASE):
            model = lowbit.from_pretrained(folder, verify=verify)
    except LowbitError as e:
        assert str(e).strip() and "\n" not in str(e), (what, str(e))
        return "error"
    except Exception as e:  # noqa: BLE001  (the point: nothing but lowbit errors may escape)
        pytest.fail(f"{what}: {type(e).__name__}: {e}")
    state = _state(model)
    assert sorted(state) == sorted(original), what
    for k, v in original.items():
        assert state[k].dtype == v.dtype and state[k].shape == v.shape and torch.equal(state[k], v), f"{what}: {k}"
    return "same"


# ---- mutations ------------------------------------------------------------------------------------------------

def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def cut_file(folder: Path, rng: random.Random) -> str:
    path = rng.choice([*_shards(folder), folder / "config.json", folder / "model.safetensors.index.json"])
    data = path.read_bytes()
    at = rng.randrange(len(data))
    path.write_bytes(data[:at])
    return f"cut {path.name} at {at} of {len(data)}"


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path: Path, header: dict, body: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + body)


WEIRD = [None, -1, 0, 1, 2**63, 1.5, "x", "", [], [1], [-1, 2], {}, True, "F8_E4M3", "U8", "I64", [0, 10**12]]


def edit_header(folder: Path, rng: random.Random) -> str:
    path = rng.choice(_shards(folder))
    header, body = _header(path)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    kind = rng.choice(["dtype", "shape", "offsets", "drop", "rename", "add", "value", "length", "metadata"])
    if kind == "dtype":
        header[name]["dtype"] = rng.choice(["F32", "F16", "BF16", "U8", "I8", "I32", "F64", "BOOL", "Q4", "x"])
    elif kind == "shape":
        shape = header[name]["shape"]
        header[name]["shape"] = [max(0, s + rng.choice([-1, 1, 7])) for s in shape] if shape else [1]
    elif kind == "offsets":
        a, b = header[name]["data_offsets"]
        header[name]["data_offsets"] = [a + rng.choice([-8, 0, 1, 8]), b + rng.choice([-8, -1, 0, 1, 8, 10**9])]
    elif kind == "drop":
        del header[name]
    elif kind == "rename":
        header[rng.choice(["x", "../evil", name + "_", "/abs", "model.layers.9.self_attn.q_proj.qweight"])] = \
            header.pop(name)
    elif kind == "add":
        header[f"{name}.extra"] = dict(header[name])
    elif kind == "value":
        header[name][rng.choice(["dtype", "shape", "data_offsets"])] = rng.choice(WEIRD)
    elif kind == "metadata":
        header["__metadata__"] = rng.choice([{"format": "pt"}, {"format": 1}, [], "x", {"a": {"b": 1}}])
    if kind == "length":
        blob = json.dumps(header).encode()
        lie = rng.choice([0, 1, len(blob) - 1, len(blob) + 1, len(blob) + len(body) + 1, 2**40, 2**64 - 1])
        path.write_bytes(struct.pack("<Q", lie) + blob + body)
    else:
        _write(path, header, body)
    return f"{kind} of {name} in {path.name}"


MODEL_KEYS = ["architectures", "hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads",
              "intermediate_size", "tie_word_embeddings", "dtype", "model_type", "rope_theta", "max_position_embeddings"]


def _mutate_key(target: dict, key: str, rng: random.Random) -> str:
    change = rng.choice(["drop", "value", "nest"])
    if change == "drop":
        target.pop(key, None)
    else:
        target[key] = rng.choice(WEIRD) if change == "value" else {"nested": target.get(key)}
    return f"{change} {key}={target.get(key)!r}"


def edit_config(folder: Path, rng: random.Random) -> str:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    qc = config["quantization_config"]
    where = rng.choice(["quantization_config", "model", "layers"])
    if where == "quantization_config":
        what = _mutate_key(qc, rng.choice(sorted(qc)), rng)
    elif where == "layers":
        qc["layers"] = rng.choice([{"model.layers.0.self_attn.q_proj": {"group_size": rng.choice(WEIRD)}}, [1], "x",
                                   {"nope": {}}, {"model.layers.0.mlp.up_proj": {"group_size": 16, "bits": 2}}])
        what = repr(qc["layers"])
    else:
        what = _mutate_key(config, rng.choice(MODEL_KEYS), rng)
    path.write_text(json.dumps(config))
    return f"config.json {where}: {what}"


def edit_index(folder: Path, rng: random.Random) -> str:
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    wm = index["weight_map"]
    name = rng.choice(sorted(wm))
    change = rng.choice(["drop", "missing-shard", "swap", "escape", "hash", "no-map", "type"])
    if change == "drop":
        del wm[name]
    elif change == "missing-shard":
        wm[name] = "model-00009-of-00009.safetensors"
    elif change == "swap":
        others = sorted(set(wm.values()) - {wm[name]})
        wm[name] = others[0] if others else wm[name]
    elif change == "escape":
        wm[name] = rng.choice(["../x.safetensors", "/etc/passwd", "a/../../b.safetensors"])
    elif change == "hash":
        meta = index.setdefault("metadata", {})
        meta[rng.choice(sorted(meta) or ["x"])] = rng.choice(WEIRD)
    elif change == "no-map":
        del index["weight_map"]
    else:
        index["weight_map"] = rng.choice(WEIRD)
    path.write_text(json.dumps(index))
    return f"index {change} {name}"


MUTATIONS = {"cut": cut_file, "header": edit_header, "config": edit_config, "index": edit_index}


@pytest.mark.parametrize("kind", list(MUTATIONS))
def test_structure_mutations_load_the_original_or_raise_a_lowbit_error(saved, tmp_path, kind):
    folder, original = saved
    outcomes = {"error": 0, "same": 0}
    for case in range(CASES):
        rng = random.Random(f"{kind}-{case}")
        work = tmp_path / f"c{case}"
        shutil.copytree(folder, work)
        what = MUTATIONS[kind](work, rng)
        outcomes[check(work, original, f"case {case}: {what}")] += 1
        shutil.rmtree(work)
    assert outcomes["error"] > CASES // 2, outcomes  # most mutations break the folder: the check has teeth


def test_flipped_data_bytes_are_caught_by_verify(saved, tmp_path):
    folder, original = saved
    for case in range(CASES):
        rng = random.Random(f"flip-{case}")
        work = tmp_path / f"c{case}"
        shutil.copytree(folder, work)
        path = rng.choice(_shards(work))
        raw = bytearray(path.read_bytes())
        (n,) = struct.unpack("<Q", raw[:8])
        at = rng.randrange(8 + n, len(raw))
        raw[at] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match=path.name):
            with helpers.deadline(SECONDS_PER_CASE):
                lowbit.from_pretrained(work, verify=True)
        shutil.rmtree(work)


# ---- value-level mutations: a stored value outside its format, the hash recomputed ------------------------------

VALUE_CONFIGS = {"int4": dict(group_size=32), "int4-sym": dict(group_size=32, symmetric=True), "nf4": {},
                 "nf4-dq": dict(double_quant=True), "fp8": {}, "mxfp4": {}, "hqq": dict(group_size=32)}
FLOAT_BAD = [float("nan"), float("inf"), float("-inf"), -1.0, -1e-3, 0.0]


def _bad_value(kind: str, attr: str, tensor: torch.Tensor, rng: random.Random):
    """A value the format never stores for ``attr`` of a ``kind`` layer, and where to write it (flat index)."""
    at = rng.randrange(tensor.numel())
    if attr == "zeros" and kind == "int4":
        return at, rng.randrange(16, 256)  # uint8 zero-points beyond the 4-bit grid
    if attr == "zeros":  # hqq float zero-points
        return at, rng.choice([float("nan"), float("inf"), float("-inf")])
    if attr == "qweight" and kind == "int4-sym":
        return at, rng.choice([0x08, 0x80, 0x88])  # a nibble holding -8
    if attr == "qweight" and kind == "fp8":
        return at, rng.choice([0x7F, 0xFF])  # e4m3fn NaN
    if attr == "scales" and kind == "mxfp4":
        return at, rng.randrange(253, 256)  # E8M0 beyond any float32 weight; 255 is NaN
    if attr == "scales" and tensor.dtype == torch.float16:
        return at, rng.choice([*FLOAT_BAD, 65504.0])
    if attr.startswith("absmax"):  # 0 is a real absmax (an all-zero block); below 0 or not finite is not
        return at, rng.choice([float("nan"), float("inf"), -1.0, -1e-3])
    return at, rng.choice(FLOAT_BAD)


VALUE_TARGETS = {"int4": ["zeros", "scales"], "int4-sym": ["qweight", "scales"], "nf4": ["absmax"],
                 "nf4-dq": ["absmax_scale", "absmax_offset"], "fp8": ["qweight", "scales"], "mxfp4": ["scales"],
                 "hqq": ["zeros", "scales"]}


@pytest.fixture(scope="module")
def value_folders(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("values")
    src = helpers.make_llama(base / "src")
    return {kind: lowbit.quantize_folder(src, base / kind, lowbit.config(kind.split("-")[0], **cfg),
                                         max_shard_size="60KB")
            for kind, cfg in VALUE_CONFIGS.items()}


@pytest.mark.parametrize("kind", list(VALUE_CONFIGS))
def test_value_mutations_with_a_recomputed_hash_raise_one_line(value_folders, tmp_path, kind):
    """verify passes (the hash was recomputed), so only the load-time value checks can refuse the folder."""
    folder = value_folders[kind]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    layers = sorted({k.rsplit(".", 1)[0] for k in index["weight_map"] if k.endswith(".qweight")})
    for case in range(max(4, CASES // 10)):
        rng = random.Random(f"value-{kind}-{case}")
        work = tmp_path / f"c{case}"
        shutil.copytree(folder, work)
        key = f"{rng.choice(layers)}.{rng.choice(VALUE_TARGETS[kind])}"
        shard = work / index["weight_map"][key]
        tensor = helpers.load_tensors(shard)[key].clone()
        at, value = _bad_value(kind, key.rsplit(".", 1)[1], tensor, rng)
        flat = tensor.view(torch.uint8).view(-1) if isinstance(value, int) and tensor.dtype == torch.float8_e4m3fn \
            else tensor.view(-1)
        flat[at] = value
        helpers.set_tensor(work, key, tensor)
        what = f"case {case}: {key}[{at}] = {value!r}"
        lowbit.verify(work)  # the hashes match
        assert check(work, {}, what, verify=True) == "error", what
        shutil.rmtree(work)
