"""Quantize-on-load, save, reload, shards, hashes, atomic replacement and config merging on tiny checkpoints.

Every model here is a tiny random transformers model built by tests/helpers.py (seeded), so the whole module runs
in seconds. Reference outputs come from plain transformers or from an independent dequantization, never from the
code path under test, except in round-trip checks (save → reload must reproduce the model bit for bit).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import pytest
import torch

import helpers  # noqa: E402

import lowbit  # noqa: E402
from lowbit.errors import CheckpointError, ConfigError, MissingTokenizerWarning, SaveError  # noqa: E402
from lowbit.formats import IntFormat  # noqa: E402
from lowbit.nn import QuantEmbedding, QuantLinear  # noqa: E402

INT8 = lowbit.config("int8")
INT4 = lowbit.config("int4", group_size=32)
CONFIGS = {"int8": INT8, "int4-g32": INT4}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ckpts")
    return {
        "llama": helpers.make_llama(base / "llama"),
        "tied": helpers.make_llama(base / "tied", tied=True),
        "bert": helpers.make_bert(base / "bert"),
        "odd": helpers.make_odd_llama(base / "odd"),
        "sharded": helpers.make_llama(base / "sharded", max_shard_size="40KB"),  # same seed as "llama"
    }


def _load(path, cfg=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lowbit.from_pretrained(path, quantization=cfg, **kw)


def _fp_model(path):
    from transformers import AutoModel, AutoModelForCausalLM

    cfg = json.loads((Path(path) / "config.json").read_text())
    cls = AutoModelForCausalLM if cfg["architectures"][0].endswith("ForCausalLM") else AutoModel
    return cls.from_pretrained(path, dtype=torch.float32).eval()


def _quant_linears(model) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in Path(parent).iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# ---- quantize on load ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_quantize_on_load_stores_rtn_codes_of_the_checkpoint(ckpts, arch, cfg_name):
    """Every eligible Linear becomes a QuantLinear whose stored codes dequantize to within half a step of the
    checkpoint's weight; the output head and embeddings stay full precision by default; the output is close to
    plain transformers' but not equal (quantization really happened)."""
    from safetensors.torch import load_file

    cfg = CONFIGS[cfg_name]
    model = _load(ckpts[arch], cfg)
    ref = _fp_model(ckpts[arch])
    weights = load_file(str(ckpts[arch] / "model.safetensors"))
    qlinears = _quant_linears(model)
    fp_linears = {n for n, m in ref.named_modules() if isinstance(m, torch.nn.Linear)}
    expect = fp_linears - {"lm_head"}
    assert set(qlinears) == expect and len(expect) == (14 if arch == "llama" else 13)  # bert: 12 + pooler
    assert not any(isinstance(m, QuantEmbedding) for m in model.modules())
    if arch == "llama":
        assert type(model.lm_head) is torch.nn.Linear
    fmt = IntFormat(bits=cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric)
    for name, module in qlinears.items():
        assert module.fmt == fmt
        stored = module.canonical_tensors()
        w = weights[f"{name}.weight"]
        deq = fmt.decode(stored)
        step = stored["scales"].float().repeat_interleave(w.shape[1] // stored["scales"].shape[1], dim=1)
        err = (deq - w).abs()
        if fmt.symmetric:  # absmax grid: every weight is within half a step
            assert torch.all(err <= step / 2 + 1e-6), name
        else:  # the integer zero-point is rounded, so the grid's ends may clip by up to half a step more
            assert torch.all(err <= step + 1e-6), name
            assert (err <= step / 2 + 1e-6).float().mean() > 0.98, name
    ids = helpers.token_ids()
    got, want = helpers.logits(model, ids), helpers.logits(ref, ids)
    rel = ((got - want).norm() / want.norm()).item()
    # random N(0, 0.05) weights are the worst case of a 4-bit grid: ~9% noise per layer (measured 0.17 overall)
    assert 0 < rel < (0.02 if cfg.bits == 8 else 0.3), rel


def test_loader_never_holds_two_full_precision_weights(ckpts, monkeypatch):
    """Spy on the tensor stream: when the loader asks for the next tensor, at most one earlier full-precision weight
    of a quantized layer may still be alive (the loop variable), and none once loading ends."""
    from lowbit.loading import checkpoint
    from lowbit.loading.reader import Reader

    read = Reader.__call__

    def probe(consume):
        alive: list[weakref.ref] = []
        peak = [0]

        def spy(reader, name):
            peak[0] = max(peak[0], sum(r() is not None for r in alive))
            tensor = read(reader, name)
            if name.endswith(helpers.LLAMA_LINEARS_WEIGHT):
                alive.append(weakref.ref(tensor))
            return tensor

        result = consume(spy)
        return result, peak[0], alive

    # control: a loader that keeps every tensor would be caught (the probe can fail)
    ckpt = checkpoint.open_checkpoint(ckpts["llama"])
    with Reader(ckpt) as reader:
        kept, peak, alive = probe(lambda spy: [spy(reader, k) for k in reader.in_file_order()])
    assert len(alive) == 14 and peak >= 13
    del kept

    def load(spy):
        monkeypatch.setattr(Reader, "__call__", spy)
        return _load(ckpts["llama"], INT4)

    model, peak, alive = probe(load)
    assert len(alive) == 14, "every quantized weight passed through the spy"
    assert peak <= 1
    gc.collect()
    assert not any(r() is not None for r in alive), "full-precision weights kept after loading"
    assert len(_quant_linears(model)) == 14


# ---- save → reload -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "tied", "bert"])
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_save_reload_is_bit_identical(ckpts, tmp_path, arch, cfg_name):
    model = _load(ckpts[arch], CONFIGS[cfg_name])
    ids = helpers.token_ids()
    before, state = helpers.logits(model, ids), _state(model)
    out = lowbit.save_pretrained(model, tmp_path / "q")
    assert out == tmp_path / "q"
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "model.safetensors.index.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "lowbit" and qc["method"] == "rtn" and qc["version"] == 1
    assert (qc["bits"], qc["group_size"], qc["symmetric"]) == (CONFIGS[cfg_name].bits, CONFIGS[cfg_name].group_size,
                                                              CONFIGS[cfg_name].symmetric)
    assert "kernel" not in qc and "compute_dtype" not in qc  # loading-only fields are never saved
    again = lowbit.from_pretrained(out)  # no config: pre-quantized
    assert type(again) is type(model)
    assert torch.equal(helpers.logits(again, ids), before)
    _assert_same_state(_state(again), state)
    assert _leftovers(tmp_path) == []


def test_tokenizer_files_are_copied_and_tokenizerless_folder_loads(ckpts, tmp_path):
    """The tiny checkpoints have no tokenizer: loading and saving work and write no tokenizer files. With
    tokenizer files beside the source, saving copies them byte for byte."""
    model = _load(ckpts["llama"], INT8)
    plain = lowbit.save_pretrained(model, tmp_path / "plain")
    assert not set(os.listdir(plain)) & set(lowbit.loading.save.TOKENIZER_FILES)
    src = tmp_path / "src"
    src.mkdir()
    for f in ckpts["llama"].iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    (src / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "WordLevel"}}')
    (src / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    out = lowbit.save_pretrained(_load(src, INT8), tmp_path / "with-tok")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / f).read_bytes() == (src / f).read_bytes()


# ---- shards ---------------------------------------------------------------------------------------------------------

def test_sharded_input_loads_like_single_file(ckpts):
    index = json.loads((ckpts["sharded"] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ids = helpers.token_ids()
    a, b = _load(ckpts["sharded"], INT4), _load(ckpts["llama"], INT4)
    assert torch.equal(helpers.logits(a, ids), helpers.logits(b, ids))
    _assert_same_state(_state(a), _state(b))


def test_small_max_shard_size_writes_complete_index_and_hashes(ckpts, tmp_path):
    from safetensors import safe_open

    model = _load(ckpts["llama"], INT4)
    ids = helpers.token_ids()
    out = lowbit.save_pretrained(model, tmp_path / "q", max_shard_size="20KB")
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) >= 3 and "model.safetensors" not in shards
    n = len(shards)
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    held, total = {}, 0
    for shard in shards:
        with safe_open(str(out / shard), "pt") as f:
            for k in f.keys():
                held[k] = shard
                t = f.get_tensor(k)
                total += t.numel() * t.element_size()
        # each shard respects the limit unless it holds a single tensor bigger than it
        in_shard = [k for k, s in held.items() if s == shard]
        assert (out / shard).stat().st_size < 20_000 + 4096 or len(in_shard) == 1, (shard, in_shard)
    assert index["weight_map"] == held
    assert set(held) == set(model.state_dict())
    assert index["metadata"]["total_size"] == total
    hashes = index["metadata"]["sha256"]
    assert sorted(hashes) == shards
    for shard in shards:
        assert hashes[shard] == hashlib.sha256((out / shard).read_bytes()).hexdigest()
    assert lowbit.verify(out) == hashes
    again = lowbit.from_pretrained(out, verify=True)
    assert torch.equal(helpers.logits(again, ids), helpers.logits(model, ids))


@pytest.mark.parametrize("size", [1000, "1KB", "0.001MB", "1KiB"])
def test_max_shard_size_forms(ckpts, tmp_path, size):
    model = _load(ckpts["bert"], INT8)
    out = lowbit.save_pretrained(model, tmp_path / "q", max_shard_size=size)
    assert len(list(out.glob("model-*.safetensors"))) > 10
    lowbit.verify(out)


# ---- per-layer group fallback -------------------------------------------------------------------------------------

def test_group_fallback_is_warned_once_recorded_and_reloaded(ckpts, tmp_path):
    cfg = lowbit.config("int4", group_size=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = lowbit.from_pretrained(ckpts["odd"], quantization=cfg)
    fallback = [w for w in caught if "group_size=64" in str(w.message)]
    assert len(fallback) == 1, [str(w.message) for w in caught]
    assert "96" in str(fallback[0].message) and "32" in str(fallback[0].message)
    odd = [f"model.layers.{i}.{m}" for i in range(2) for m in helpers.LLAMA_LINEARS if m != "mlp.down_proj"]
    for name, module in _quant_linears(model).items():
        assert module.fmt.group_size == (32 if name in odd else 64), name
    ids = helpers.token_ids()
    before = helpers.logits(model, ids)
    out = lowbit.save_pretrained(model, tmp_path / "q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["group_size"] == 64
    assert qc["layers"] == {name: {"group_size": 32} for name in odd}
    again = _load(out)
    assert torch.equal(helpers.logits(again, ids), before)
    assert {n: m.fmt.group_size for n, m in _quant_linears(again).items()} == \
        {n: m.fmt.group_size for n, m in _quant_linears(model).items()}
    report = {layer.name: layer.format for layer in lowbit.inspect(again).layers}
    assert all("g32" in report[n] for n in odd) and "g64" in report["model.layers.0.mlp.down_proj"]


def test_recorded_layer_group_sizes_are_what_reload_uses(ckpts, tmp_path):
    """A folder whose top-level group_size is 64 but whose ``layers`` record says every linear is stored with
    groups of 32 (as a writer with another fallback rule could produce) loads those layers as g32."""
    model = _load(ckpts["llama"], INT4)  # every layer g32
    out = lowbit.save_pretrained(model, tmp_path / "q")
    names = [f"model.layers.{i}.{m}" for i in range(2) for m in helpers.LLAMA_LINEARS]
    helpers.edit_quant_config(out, group_size=64, layers={n: {"group_size": 32} for n in names})
    again = _load(out)
    assert {m.fmt.group_size for m in _quant_linears(again).values()} == {32}
    assert torch.equal(helpers.logits(again, helpers.token_ids()), helpers.logits(model, helpers.token_ids()))


def test_strict_group_size_raises_config_error(ckpts, tmp_path):
    before = helpers.snapshot(ckpts["odd"])
    with pytest.raises(ConfigError) as err:
        lowbit.from_pretrained(ckpts["odd"], quantization=lowbit.config("int4", group_size=64, strict=True))
    msg = str(err.value)
    assert "\n" not in msg and "group_size=64" in msg and "96" in msg
    assert helpers.snapshot(ckpts["odd"]) == before


# ---- tied embeddings --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [lowbit.config("int8", quantize_embeddings=True),
                                 lowbit.config("int4", group_size=32, quantize_embeddings=True, quantize_lm_head=True)],
                         ids=["int8", "int4"])
def test_tied_embeddings_share_one_int8_table_saved_once(ckpts, tmp_path, cfg):
    from safetensors import safe_open

    model = _load(ckpts["tied"], cfg)
    emb, head = model.model.embed_tokens, model.lm_head
    assert isinstance(emb, QuantEmbedding) and isinstance(head, QuantLinear)
    assert head.fmt == emb.fmt == IntFormat(bits=8, group_size=None, symmetric=True)
    assert head.canonical_tensors()["qweight"].data_ptr() == emb.qweight.data_ptr()
    # the table is the int8 RTN of the tied fp weight
    from safetensors.torch import load_file

    w = load_file(str(ckpts["tied"] / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.all((emb.fmt.decode(emb.canonical_tensors()) - w).abs() <= emb.scales / 2 + 1e-6)
    ids = helpers.token_ids()
    before = helpers.logits(model, ids)
    out = lowbit.save_pretrained(model, tmp_path / "q")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"model.embed_tokens.qweight", "model.embed_tokens.scales"} <= keys
    assert not any(k.startswith("lm_head.") for k in keys)
    assert "model.embed_tokens.weight" not in keys
    again = lowbit.from_pretrained(out)
    assert again.lm_head.canonical_tensors()["qweight"].data_ptr() == again.model.embed_tokens.qweight.data_ptr()
    assert torch.equal(helpers.logits(again, ids), before)


def test_tied_quantize_embeddings_only_warns_both_are_quantized(ckpts):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = lowbit.from_pretrained(ckpts["tied"], quantization=lowbit.config("int8", quantize_embeddings=True))
    assert any("tied" in str(w.message) for w in caught)
    assert isinstance(model.lm_head, QuantLinear)


# ---- save routing and atomic replacement -------------------------------------------------------------------------

def test_model_save_pretrained_routes_to_lowbit(ckpts, tmp_path):
    model = _load(ckpts["llama"], INT4)
    a = lowbit.save_pretrained(model, tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    b = tmp_path / "b"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    index = json.loads((b / "model.safetensors.index.json").read_text())
    assert "sha256" in index["metadata"]
    assert json.loads((b / "config.json").read_text())["quantization_config"]["method"] == "rtn"
    assert torch.equal(helpers.logits(lowbit.from_pretrained(b), helpers.token_ids()),
                       helpers.logits(model, helpers.token_ids()))


def test_saving_twice_replaces_the_folder(ckpts, tmp_path):
    out = tmp_path / "q"
    first = _load(ckpts["llama"], INT8)
    lowbit.save_pretrained(first, out, max_shard_size="20KB")
    assert len(list(out.glob("model-*.safetensors"))) > 1
    (out / "generation_config.json").unlink()  # a file the second save writes again
    second = _load(ckpts["llama"], INT4)
    lowbit.save_pretrained(second, out, overwrite=True)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]  # old shards are gone
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 4
    assert _leftovers(tmp_path) == []
    assert torch.equal(helpers.logits(lowbit.from_pretrained(out), helpers.token_ids()),
                       helpers.logits(second, helpers.token_ids()))


def test_failed_save_leaves_old_model_untouched(ckpts, tmp_path, monkeypatch):
    from lowbit.loading import save

    out = tmp_path / "q"
    lowbit.save_pretrained(_load(ckpts["llama"], INT8), out)
    before = helpers.snapshot(tmp_path)
    real_write = save._write

    def crash(model, tmp, limit, tok):
        real_write(model, tmp, limit, tok)  # the new model is complete in the temp folder ...
        raise OSError(28, "No space left on device")  # ... then the disk fills up

    monkeypatch.setattr(save, "_write", crash)
    with pytest.raises(SaveError, match="No space left on device"):
        lowbit.save_pretrained(_load(ckpts["llama"], INT4), out, overwrite=True)
    assert helpers.snapshot(tmp_path) == before


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _dead_lock(path: Path, pid: int) -> None:
    from lowbit.loading.folder_lock import holder

    path.write_text(json.dumps({**holder(), "pid": pid}))


def test_stale_temp_and_old_folders_of_dead_saves_are_cleaned(ckpts, tmp_path):
    out = tmp_path / "q"
    lowbit.save_pretrained(_load(ckpts["llama"], INT8), out)
    dead = _dead_pid()
    stale = [tmp_path / f".q.tmp-{dead}-0000000a", tmp_path / f".q.old-{dead}-0000000a"]
    live = tmp_path / f".q.tmp-{os.getppid()}-0000000b"  # a save running right now in another (live) process
    other = tmp_path / f".other.tmp-{dead}-0000000c"  # belongs to another output
    for folder in (*stale, live, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    _dead_lock(tmp_path / f".q.lock-{dead}-0000000a", dead)
    _dead_lock(tmp_path / f".other.lock-{dead}-0000000c", dead)
    (tmp_path / f".q.lock-{os.getppid()}-0000000b").write_text(json.dumps(
        {**json.loads((tmp_path / f".other.lock-{dead}-0000000c").read_text()), "pid": os.getppid(), "start": None}))
    lowbit.save_pretrained(_load(ckpts["llama"], INT4), out, overwrite=True)
    assert _leftovers(tmp_path) == sorted([live.name, other.name])
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 4


def test_old_folder_without_target_is_restored(ckpts, tmp_path, monkeypatch):
    """A save killed between its two renames left only ``.q.old-<token>``: the next save puts it back as ``q``
    first, so that if this save fails too the user still has the old model."""
    from lowbit.loading import save

    lowbit.save_pretrained(_load(ckpts["llama"], INT8), tmp_path / "q")
    dead = _dead_pid()
    os.rename(tmp_path / "q", tmp_path / f".q.old-{dead}-0000000a")
    _dead_lock(tmp_path / f".q.lock-{dead}-0000000a", dead)
    old = helpers.snapshot(tmp_path / f".q.old-{dead}-0000000a")

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(save, "_write", crash)
    with pytest.raises(SaveError, match="No space left on device"):
        lowbit.save_pretrained(_load(ckpts["llama"], INT4), tmp_path / "q", overwrite=True)
    assert helpers.snapshot(tmp_path / "q") == old
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    model = _load(ckpts["llama"], INT4)
    lowbit.save_pretrained(model, tmp_path / "q", overwrite=True)
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["bits"] == 4
    assert _leftovers(tmp_path) == [] and not list(tmp_path.glob(".q.lock-*"))


# ---- hashes ---------------------------------------------------------------------------------------------------------

def _flip_byte(path: Path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_detects_a_flipped_byte(ckpts, tmp_path):
    out = lowbit.save_pretrained(_load(ckpts["llama"], INT4), tmp_path / "q", max_shard_size="20KB")
    assert len(lowbit.verify(out)) > 1
    shard = sorted(out.glob("model-*.safetensors"))[1]
    _flip_byte(shard)
    with pytest.raises(CheckpointError) as err:
        lowbit.verify(out)
    assert "\n" not in str(err.value) and shard.name in str(err.value)
    with pytest.raises(CheckpointError) as err:
        lowbit.from_pretrained(out, verify=True)
    assert shard.name in str(err.value)
    lowbit.from_pretrained(out)  # without verify the (still well-formed) file loads


def test_verify_needs_recorded_hashes(ckpts):
    with pytest.raises(CheckpointError) as err:
        lowbit.verify(ckpts["llama"])  # a plain transformers folder has no hashes
    assert "\n" not in str(err.value) and str(ckpts["llama"]) in str(err.value)


# ---- merging the caller's config with the checkpoint's ---------------------------------------------------------

@pytest.fixture(scope="module")
def saved_int4(ckpts, tmp_path_factory) -> Path:
    return lowbit.save_pretrained(_load(ckpts["llama"], INT4), tmp_path_factory.mktemp("saved") / "int4")


def test_other_method_than_the_checkpoints_is_a_config_error(saved_int4):
    import dataclasses

    from lowbit import registry
    from lowbit.methods.rtn import RtnConfig, RtnQuantizer

    @dataclasses.dataclass(frozen=True)
    class OtherConfig(RtnConfig):
        """A second method for this test only."""

        method = "testother"

    class OtherQuantizer(RtnQuantizer):
        config_cls = OtherConfig

    registry.register_method(OtherConfig, OtherQuantizer)
    try:
        with pytest.raises(ConfigError) as err:
            lowbit.from_pretrained(saved_int4, quantization=lowbit.config("testother", bits=4, group_size=32))
    finally:
        registry.unregister("testother")
    msg = str(err.value)
    assert "\n" not in msg and "'rtn'" in msg and "'testother'" in msg


def test_differing_format_field_warns_once_and_checkpoint_wins(saved_int4):
    ids = helpers.token_ids()
    plain = lowbit.from_pretrained(saved_int4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = lowbit.from_pretrained(saved_int4, quantization=lowbit.config("int4", group_size=64))
    caught = [w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning,  # 3rd-party
                                                                MissingTokenizerWarning))]  # the tiny model has none
    assert len(caught) == 1, [str(w.message) for w in caught]
    msg = str(caught[0].message)
    assert "group_size" in msg and "32" in msg
    assert model.lowbit_quantizer.config.group_size == 32
    assert all(m.fmt.group_size == 32 for m in _quant_linears(model).values())
    assert torch.equal(helpers.logits(model, ids), helpers.logits(plain, ids))


def test_loading_fields_come_from_the_caller(saved_int4):
    cfg = lowbit.config("int4", group_size=32, kernel="reference", compute_dtype="float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = lowbit.from_pretrained(saved_int4, quantization=cfg)
    caught = [w for w in caught if not issubclass(w.category, MissingTokenizerWarning)]  # the tiny model has none
    assert not caught, [str(w.message) for w in caught]
    assert {m.kernel.name for m in _quant_linears(model).values()} == {"reference"}
    assert {m.compute_dtype for m in _quant_linears(model).values()} == {torch.float32}


def test_newer_config_version_is_a_config_error(saved_int4, tmp_path):
    folder = tmp_path / "newer"
    folder.mkdir()
    for f in saved_int4.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    helpers.edit_quant_config(folder, version=2)
    before = helpers.snapshot(tmp_path)
    with pytest.raises(ConfigError) as err:
        lowbit.from_pretrained(folder)
    msg = str(err.value)
    assert "\n" not in msg and "version 2" in msg and "upgrade" in msg
    assert helpers.snapshot(tmp_path) == before


# ---- placement -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("placement", [dict(device_map={"": "cpu"}),
                                       dict(device_map="auto", max_memory={"cpu": "1GiB"})], ids=["dict", "auto"])
def test_device_map_on_cpu(ckpts, placement):
    ids = helpers.token_ids()
    model = _load(ckpts["llama"], INT4, **placement)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert torch.equal(helpers.logits(model, ids), helpers.logits(_load(ckpts["llama"], INT4), ids))


def _skeleton_on_two_gpus(monkeypatch, quantized: bool):
    """A meta-device Llama (8 layers) as the loader builds it, on a machine that says it has two 80 GiB GPUs."""
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    from lowbit.registry import get

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 << 30, 80 << 30))
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=128, tie_word_embeddings=False)
    with init_empty_weights():
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    quantizer = get(INT4.method).quantizer_cls(INT4, pre_quantized=False) if quantized else None
    if quantizer is not None:
        quantizer.preprocess_model(model)
    return model, quantizer


def test_placement_over_two_gpus_uses_the_packed_sizes(monkeypatch):
    """accelerate fills GPU 0 up to its max_memory from the packed (int4) sizes, then goes on to GPU 1."""
    from lowbit.loading.pipeline import _placement

    budget = {0: 2_900_000, 1: 10 << 30}  # bytes: room for one bf16 layer on GPU 0, or several int4 ones
    layers_on = {}
    for quantized in (False, True):
        model, quantizer = _skeleton_on_two_gpus(monkeypatch, quantized)
        place = _placement(model, quantizer, torch.device("cuda"), torch.bfloat16, "sequential", dict(budget))
        devices = [place.device_of(f"model.layers.{i}.mlp.up_proj.weight") for i in range(8)]
        assert {d.type for d in devices} == {"cuda"} and place.multi
        layers_on[quantized] = sum(d.index == 0 for d in devices)
    assert 0 < layers_on[False] < layers_on[True] < 8, layers_on  # split in both; int4 fits more layers on GPU 0
