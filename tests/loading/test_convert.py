"""Disk-to-disk quantization (``lowbit.quantize_folder`` / ``lowbit quantize --max-memory``) on tiny checkpoints.

The reference is always the in-memory path: ``save_pretrained(from_pretrained(src, quantization=cfg), out)`` at the
same shard size; the streamed folder must equal it byte for byte (shards, index, config.json).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import helpers  # noqa: E402

import lowbit  # noqa: E402
from lowbit.errors import CheckpointError, ConfigError, SaveError  # noqa: E402
from lowbit.loading import engine as engine_mod  # noqa: E402
from lowbit.loading import save as save_mod  # noqa: E402
from lowbit.loading import stream as stream_mod  # noqa: E402


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ckpts")
    return {
        "llama": helpers.make_llama(base / "llama"),
        "tied": helpers.make_llama(base / "tied", tied=True),
        "sharded": helpers.make_llama(base / "sharded", max_shard_size="40KB"),
        "odd": helpers.make_odd_llama(base / "odd"),
        "bert": helpers.make_bert(base / "bert"),
        "bf16": helpers.make_llama(base / "bf16", dtype=torch.bfloat16),
    }


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _reference(src: Path, out: Path, cfg, max_shard_size="2GB", **load_kw) -> Path:
    model = _quiet(lowbit.from_pretrained, src, quantization=cfg, **load_kw)
    return lowbit.save_pretrained(model, out, max_shard_size=max_shard_size)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def assert_same_folder(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], name


CASES = {
    "int4": ("llama", lambda: lowbit.config("int4", group_size=32)),
    "int4-g128-fallback": ("odd", lambda: lowbit.config("int4")),  # K = 96 falls back; recorded per layer
    "int8-tied-embeddings": ("tied", lambda: lowbit.config("int8", quantize_embeddings=True)),
    "int8-tied-plain": ("tied", lambda: lowbit.config("int8")),  # the head is the embedding: written once
    "hqq": ("llama", lambda: lowbit.config("hqq", bits=4, group_size=32)),
    "nf4": ("llama", lambda: lowbit.config("nf4")),
    "int4-sharded-source": ("sharded", lambda: lowbit.config("int4", group_size=32)),
    "int8-lm-head-bert": ("bert", lambda: lowbit.config("int8")),
    "int4-bf16": ("bf16", lambda: lowbit.config("int4", group_size=64)),
}


@pytest.mark.parametrize("shard", ["2GB", "20KB"])
@pytest.mark.parametrize("case", list(CASES))
def test_streamed_folder_equals_load_then_save(ckpts, tmp_path, case, shard):
    src, make_cfg = CASES[case]
    cfg = make_cfg()
    ref = _reference(ckpts[src], tmp_path / "ref", cfg, max_shard_size=shard)
    out = _quiet(lowbit.quantize_folder, ckpts[src], tmp_path / "out", cfg, max_shard_size=shard)
    assert out == tmp_path / "out"
    assert_same_folder(out, ref)
    shards = list(out.glob("*.safetensors"))
    assert (len(shards) > 1) == (shard == "20KB")  # the small size really splits, so order matters
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["method"] == cfg.method
    if case == "int4-g128-fallback":
        assert qc["layers"]["model.layers.1.self_attn.q_proj"] == {"group_size": 32}  # K = 96
        assert qc["layers"]["model.layers.1.mlp.down_proj"] == {"group_size": 64}  # K = 192
    lowbit.verify(out)


def test_output_loads_and_runs_like_the_in_memory_model(ckpts, tmp_path):
    cfg = lowbit.config("int4", group_size=32)
    out = lowbit.quantize_folder(ckpts["llama"], tmp_path / "out", cfg)
    ids = helpers.token_ids()
    expected = helpers.logits(_quiet(lowbit.from_pretrained, ckpts["llama"], quantization=cfg), ids)
    assert torch.equal(helpers.logits(lowbit.from_pretrained(out), ids), expected)


def test_model_weights_are_never_built(ckpts, tmp_path, monkeypatch):
    built = []
    original = engine_mod.build_skeleton
    monkeypatch.setattr(engine_mod, "build_skeleton", lambda *a: built.append(original(*a)) or built[-1])
    lowbit.quantize_folder(ckpts["llama"], tmp_path / "out", lowbit.config("int4", group_size=32))
    (model,) = built
    real = [n for n, t in model.state_dict(keep_vars=True).items() if t is not None and t.device.type != "meta"]
    assert real == []  # every weight stayed a meta shell; tensors went from the file straight to the writer


# ---- memory cap ------------------------------------------------------------------------------------------------

def test_max_memory_caps_the_shard_buffer_at_a_third(ckpts, tmp_path, monkeypatch):
    in_flight = []
    original = save_mod.save_file

    def recording(tensors, *args, **kwargs):
        in_flight.append((len(tensors), sum(t.numel() * t.element_size() for t in tensors.values())))
        return original(tensors, *args, **kwargs)

    monkeypatch.setattr(save_mod, "save_file", recording)
    cfg = lowbit.config("int8")
    out = lowbit.quantize_folder(ckpts["llama"], tmp_path / "out", cfg, max_memory=60_000)
    assert len(in_flight) > 3
    assert all(nbytes <= 20_000 or count == 1 for count, nbytes in in_flight), in_flight
    monkeypatch.setattr(save_mod, "save_file", original)
    # the cap is exactly a smaller shard size: same bytes as saving the loaded model at max_memory / 3
    assert_same_folder(out, _reference(ckpts["llama"], tmp_path / "ref", cfg, max_shard_size=20_000))


def test_max_memory_larger_than_three_shards_leaves_max_shard_size(ckpts, tmp_path):
    assert save_mod.shard_limit("2GB", "1GB") == 1_000_000_000 // 3
    assert save_mod.shard_limit("100MB", "1GB") == 100_000_000
    assert save_mod.shard_limit(1000, None) == 1000
    assert save_mod.shard_limit(1000, 2) == 1


# ---- command line ----------------------------------------------------------------------------------------------

def test_cli_max_memory_streams_the_same_folder(ckpts, tmp_path):
    out = tmp_path / "out"
    result = helpers.run_cli(["quantize", ckpts["llama"], out, "--method", "int4", "--group-size", "32",
                              "--max-memory", "60KB"])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and f"wrote {out}" in result.stdout
    assert len(list(out.glob("*.safetensors"))) > 1  # shards of at most 60KB / 3
    ref = _reference(ckpts["llama"], tmp_path / "ref", lowbit.config("int4", group_size=32), max_shard_size=20_000)
    assert_same_folder(out, ref)


@pytest.mark.parametrize("args,names", [
    (["--max-memory", "lots"], ["max_memory='lots'", "2GB"]),
    (["--max-memory", "1GB", "--device", "cuda"], ["--max-memory", "cuda"]),
])
def test_cli_bad_max_memory_is_one_line(ckpts, tmp_path, args, names):
    out = tmp_path / "out"
    result = helpers.run_cli(["quantize", ckpts["llama"], out, "--method", "int8", *args])
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowbit: error:"), result.stderr
    assert all(n in lines[0] for n in names), lines[0]
    assert not out.exists()


# ---- bad input ---------------------------------------------------------------------------------------------------

def _no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_pre_quantized_source_is_a_config_error(ckpts, tmp_path):
    saved = lowbit.quantize_folder(ckpts["llama"], tmp_path / "q", lowbit.config("int8"))
    with pytest.raises(ConfigError, match="already quantized"):
        lowbit.quantize_folder(saved, tmp_path / "out", lowbit.config("int8"))
    _no_leftovers(tmp_path, "out")


@pytest.mark.parametrize("kwargs,error,match", [
    ({"max_memory": "huge"}, SaveError, "max_memory='huge' is not a size"),
    ({"max_memory": 0}, SaveError, "max_memory=0"),
    ({"max_memory": "0.0001KB"}, SaveError, "less than one byte"),
    ({"max_shard_size": "big"}, SaveError, "max_shard_size='big'"),
    ({"nonfinite": "ignore"}, ConfigError, "nonfinite='ignore'"),
    ({"quantization": None}, ConfigError, "quantization=None"),
    ({"quantization": "int5"}, Exception, "int5"),
])
def test_bad_arguments_are_one_line_errors_before_any_output(ckpts, tmp_path, kwargs, error, match):
    kwargs = {"quantization": lowbit.config("int8"), **kwargs}
    with pytest.raises(error, match=match) as info:
        lowbit.quantize_folder(ckpts["llama"], tmp_path / "out", kwargs.pop("quantization"), **kwargs)
    assert "\n" not in str(info.value)
    _no_leftovers(tmp_path, "out")


def test_non_empty_output_is_refused_and_untouched(ckpts, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"meow")
    before = helpers.snapshot(photos)
    with pytest.raises(SaveError, match="not empty"):
        lowbit.quantize_folder(ckpts["llama"], photos, lowbit.config("int8"))
    assert helpers.snapshot(photos) == before


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _count_quantized(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = lowbit.Quantizer.quantize_tensor
    monkeypatch.setattr(lowbit.Quantizer, "quantize_tensor",
                        lambda self, name, w: calls.append(name) or original(self, name, w))
    return calls


def test_missing_tensor_fails_before_any_work_and_keeps_an_old_model(ckpts, tmp_path, monkeypatch):
    src = _copy(ckpts["llama"], tmp_path / "src")
    helpers.drop_tensor(src, "model.layers.1.mlp.up_proj.weight")
    helpers.drop_tensor(src, "model.norm.weight")
    calls = _count_quantized(monkeypatch)
    with pytest.raises(CheckpointError, match=r"lacks 2 tensor\(s\).*up_proj.weight.*model.norm.weight"):
        lowbit.quantize_folder(src, tmp_path / "out", lowbit.config("int8"), max_shard_size="20KB")
    assert calls == []  # found from the headers, not after quantizing the rest
    _no_leftovers(tmp_path, "out")
    old = lowbit.quantize_folder(ckpts["llama"], tmp_path / "old", lowbit.config("int8"))
    before = helpers.snapshot(old)
    with pytest.raises(CheckpointError, match="lacks"):
        lowbit.quantize_folder(src, old, lowbit.config("int8"), max_shard_size="20KB", overwrite=True)
    assert helpers.snapshot(old) == before
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_unexpected_tensor_is_named_before_any_work(ckpts, tmp_path, monkeypatch):
    src = _copy(ckpts["llama"], tmp_path / "src")
    helpers.add_tensor(src, "model.layers.0.mlp.extra.weight", torch.zeros(4, 4))
    calls = _count_quantized(monkeypatch)
    with pytest.raises(CheckpointError, match="model.layers.0.mlp.extra.weight"):
        lowbit.quantize_folder(src, tmp_path / "out", lowbit.config("int8"))
    assert calls == []
    _no_leftovers(tmp_path, "out")


def test_nonfinite_is_an_error_or_clamped_like_loading(ckpts, tmp_path):
    src = _copy(ckpts["llama"], tmp_path / "src")
    weights = helpers.load_tensors(src / "model.safetensors")
    w = weights["model.layers.0.self_attn.q_proj.weight"]
    w[0, 0], w[1, 1] = float("nan"), float("inf")
    helpers.save_tensors(src / "model.safetensors", weights)
    cfg = lowbit.config("int4", group_size=32)
    with pytest.raises(CheckpointError, match=r"q_proj.weight.? has 2 NaN/Inf"):
        lowbit.quantize_folder(src, tmp_path / "out", cfg)
    _no_leftovers(tmp_path, "out")
    with pytest.warns(UserWarning, match="replaced NaN/Inf values in 1 tensor"):
        out = lowbit.quantize_folder(src, tmp_path / "out", cfg, nonfinite="clamp")
    assert_same_folder(out, _reference(src, tmp_path / "ref", cfg, nonfinite="clamp"))


def test_tied_config_over_a_different_head_is_refused(ckpts, tmp_path, monkeypatch):
    monkeypatch.setattr(stream_mod, "COMPARE_BYTES", 64 * 4 * 10)  # compare in several chunks of rows
    src = _copy(ckpts["llama"], tmp_path / "src")
    helpers.edit_config(src, tie_word_embeddings=True)
    with pytest.raises(CheckpointError, match="ties the output head"):
        _quiet(lowbit.from_pretrained, src, quantization=lowbit.config("int8"))
    with pytest.raises(CheckpointError, match="ties the output head"):
        lowbit.quantize_folder(src, tmp_path / "out", lowbit.config("int8"))
    _no_leftovers(tmp_path, "out")
    weights = helpers.load_tensors(src / "model.safetensors")  # now an equal head: dropped, as saving does
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    helpers.save_tensors(src / "model.safetensors", weights)
    out = lowbit.quantize_folder(src, tmp_path / "out", lowbit.config("int8"))
    assert "lm_head.weight" not in json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert_same_folder(out, _reference(src, tmp_path / "ref", lowbit.config("int8")))
