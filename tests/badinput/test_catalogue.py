"""Bad input: each case raises a ``lowbit.errors`` exception with a one-line message that names the offending value,
and leaves every file on disk as it was (no output, no temp folders, the input untouched)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import sys
import uuid
import warnings
from pathlib import Path

import pytest
import torch

import helpers  # noqa: E402

import lowbit  # noqa: E402
from lowbit.errors import CheckpointError, ConfigError, FormatError, LowbitError, SaveError  # noqa: E402

Q_PROJ = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Pristine inputs, copied into each test's own folder before it is damaged."""
    base = tmp_path_factory.mktemp("sources")
    llama = helpers.make_llama(base / "llama")
    sharded = helpers.make_llama(base / "sharded", max_shard_size="40KB")
    model = lowbit.from_pretrained(llama, quantization=lowbit.config("int4", group_size=32))
    quant = lowbit.save_pretrained(model, base / "int4")
    return {"llama": llama, "sharded": sharded, "int4": quant, "model": model}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def expect_error(exc: type[LowbitError], call, *, names: list[str], watch: Path) -> str:
    """``call()`` raises ``exc`` with a one-line message naming each of ``names``; nothing under ``watch`` changes."""
    before = helpers.snapshot(watch)
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert isinstance(info.value, LowbitError)
    assert msg.strip() and "\n" not in msg, msg
    for name in names:
        assert str(name) in msg, (name, msg)
    assert helpers.snapshot(watch) == before, "bad input changed files on disk"
    return msg


def _load(path, cfg=None):
    return lambda: lowbit.from_pretrained(path, quantization=cfg)


# ---- the folder and config.json ------------------------------------------------------------------------------

def test_missing_folder(tmp_path):
    expect_error(CheckpointError, _load(tmp_path / "nope"), names=[tmp_path / "nope", "does not exist"], watch=tmp_path)


def test_path_is_a_file(tmp_path, sources):
    f = tmp_path / "model.safetensors"
    shutil.copy(sources["llama"] / "model.safetensors", f)
    expect_error(CheckpointError, _load(f), names=[f, "folder"], watch=tmp_path)


def test_no_config_json(tmp_path, sources):
    d = _copy(sources["llama"], tmp_path / "m")
    (d / "config.json").unlink()
    expect_error(CheckpointError, _load(d), names=[d, "config.json"], watch=tmp_path)


def test_config_json_is_not_json(tmp_path, sources):
    d = _copy(sources["llama"], tmp_path / "m")
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    expect_error(CheckpointError, _load(d), names=[d / "config.json", "JSON"], watch=tmp_path)


def test_config_without_architectures(tmp_path, sources):
    d = _copy(sources["llama"], tmp_path / "m")
    helpers.edit_config(d, architectures=helpers.DELETE)
    expect_error(CheckpointError, _load(d), names=["architectures=None"], watch=tmp_path)


def test_architecture_not_in_transformers(tmp_path, sources):
    d = _copy(sources["llama"], tmp_path / "m")
    helpers.edit_config(d, architectures=["LlamaForTimeTravel"])
    expect_error(CheckpointError, _load(d), names=["'LlamaForTimeTravel'", "transformers"], watch=tmp_path)


class _Evil:
    """Unpickling this creates a marker file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickle_checkpoint_only_is_refused_unread(tmp_path, sources):
    d = _copy(sources["llama"], tmp_path / "m")
    (d / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(marker)))
    msg = expect_error(CheckpointError, _load(d), names=["pytorch_model.bin"], watch=tmp_path)
    assert "convert" in msg and "safetensors" in msg  # says how to fix it
    assert not marker.exists()


def test_no_weights_at_all(tmp_path, sources):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(sources["llama"] / "config.json", d)
    expect_error(CheckpointError, _load(d), names=[d, "model.safetensors"], watch=tmp_path)


# ---- shards and safetensors files -------------------------------------------------------------------------------

def test_shard_listed_in_index_but_absent(tmp_path, sources):
    d = _copy(sources["sharded"], tmp_path / "m")
    shard = sorted(d.glob("model-*.safetensors"))[2]
    shard.unlink()
    expect_error(CheckpointError, _load(d), names=[repr(shard.name)], watch=tmp_path)


def _header_len(path: Path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def _truncate(d: Path, cut: str) -> Path:
    f = d / "model.safetensors"
    data = f.read_bytes()
    keep = {"inside-length": 5, "inside-header": 8 + _header_len(f) // 2, "inside-body": len(data) - 100}[cut]
    f.write_bytes(data[:keep])
    return f


@pytest.mark.parametrize("cut", ["inside-length", "inside-header", "inside-body"])
def test_truncated_safetensors(tmp_path, sources, cut):
    d = _copy(sources["llama"], tmp_path / "m")
    f = _truncate(d, cut)
    expect_error(CheckpointError, _load(d), names=[f], watch=tmp_path)


def test_truncated_body_message_names_tensor_and_cause(tmp_path, sources):
    d = _copy(sources["llama"], tmp_path / "m")
    f = _truncate(d, "inside-body")
    expect_error(CheckpointError, _load(d), names=[f, "'model.norm.weight'", "truncated"], watch=tmp_path)


@pytest.mark.parametrize("cut", ["inside-length", "inside-header"])
def test_truncated_header_message_says_truncated(tmp_path, sources, cut):
    d = _copy(sources["llama"], tmp_path / "m")
    f = _truncate(d, cut)
    msg = expect_error(CheckpointError, _load(d), names=[f, "re-download"], watch=tmp_path)
    assert "permissions" not in msg


def test_header_length_larger_than_file(tmp_path, sources):
    d = _copy(sources["llama"], tmp_path / "m")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 10 ** 12) + data[8:])
    expect_error(CheckpointError, _load(d), names=[f], watch=tmp_path)


@pytest.mark.parametrize("change", ["shape", "dtype"])
def test_header_disagrees_with_data_size(tmp_path, sources, change):
    d = _copy(sources["llama"], tmp_path / "m")
    f = d / "model.safetensors"
    header, body = helpers.read_raw(f)
    name = "model.layers.1.mlp.up_proj.weight"
    if change == "shape":
        header[name]["shape"] = [128, 128]  # twice the 128 x 64 the offsets hold
    else:
        header[name]["dtype"] = "F64"
    helpers.write_raw(f, header, body)
    expect_error(CheckpointError, _load(d), names=[repr(name), f], watch=tmp_path)


@pytest.mark.parametrize("bad", ["../x.safetensors", "ABSOLUTE", "sub/model-00001-of-00012.safetensors"])
def test_shard_name_escaping_the_folder(tmp_path, sources, bad):
    """Each name points at a real, valid shard, so only the name check can stop it."""
    d = _copy(sources["sharded"], tmp_path / "m")
    first_shard = d / "model-00001-of-00012.safetensors"
    shutil.copy(first_shard, tmp_path / "x.safetensors")
    (d / "sub").mkdir()
    shutil.copy(first_shard, d / "sub" / first_shard.name)
    if bad == "ABSOLUTE":
        bad = str(tmp_path / "x.safetensors")
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for name, shard in index["weight_map"].items():
        if shard == first_shard.name:
            index["weight_map"][name] = bad
    index_path.write_text(json.dumps(index))
    expect_error(CheckpointError, _load(d), names=[repr(bad)], watch=tmp_path)


# ---- tensors that do not match the model ---------------------------------------------------------------------

def test_prequantized_tensor_missing(tmp_path, sources):
    d = _copy(sources["int4"], tmp_path / "m")
    helpers.drop_tensor(d, f"{Q_PROJ}.scales")
    expect_error(CheckpointError, _load(d), names=[f"{Q_PROJ}.scales"], watch=tmp_path)


def test_full_precision_tensor_missing(tmp_path, sources):
    d = _copy(sources["llama"], tmp_path / "m")
    helpers.drop_tensor(d, "model.layers.1.post_attention_layernorm.weight")
    expect_error(CheckpointError, _load(d, lowbit.config("int8")),
                 names=["model.layers.1.post_attention_layernorm.weight"], watch=tmp_path)


@pytest.mark.parametrize("which", ["llama", "int4"])
def test_unexpected_tensor(tmp_path, sources, which):
    d = _copy(sources[which], tmp_path / "m")
    helpers.add_tensor(d, "model.layers.0.mlp.extra_proj.weight", torch.zeros(4, 4))
    expect_error(CheckpointError, _load(d, lowbit.config("int8") if which == "llama" else None),
                 names=["model.layers.0.mlp.extra_proj.weight"], watch=tmp_path)


@pytest.mark.parametrize("which, name, exc", [
    ("llama", f"{Q_PROJ}.weight", CheckpointError),  # a layer being quantized
    ("llama", "model.norm.weight", CheckpointError),  # a tensor kept at full precision
    ("int4", f"{Q_PROJ}.qweight", FormatError),  # a stored quantized tensor
])
def test_tensor_with_wrong_shape(tmp_path, sources, which, name, exc):
    d = _copy(sources[which], tmp_path / "m")
    t = helpers.load_tensors(d / "model.safetensors")[name]
    helpers.add_tensor(d, name, torch.cat([t, t]))  # twice as many rows
    msg = expect_error(exc, _load(d, lowbit.config("int4", group_size=32) if which == "llama" else None),
                       names=[name], watch=tmp_path)
    assert str(list(torch.cat([t, t]).shape)) in msg and str(list(t.shape)) in msg


def test_nan_weights(tmp_path, sources):
    d = _copy(sources["llama"], tmp_path / "m")
    name = "model.layers.1.mlp.up_proj.weight"
    t = helpers.load_tensors(d / "model.safetensors")[name].clone()
    t[3, 5] = float("nan")
    t[7, 1] = float("inf")
    helpers.add_tensor(d, name, t)
    expect_error(CheckpointError, _load(d, lowbit.config("int8")), names=[name, "2 NaN/Inf", "nonfinite='clamp'"],
                 watch=tmp_path)


def test_nan_weights_clamped_on_request(tmp_path, sources):
    d = _copy(sources["llama"], tmp_path / "m")
    name = "model.layers.1.mlp.up_proj.weight"
    t = helpers.load_tensors(d / "model.safetensors")[name].clone()
    t[3, 5], t[7, 1] = float("nan"), float("inf")
    helpers.add_tensor(d, name, t)
    with pytest.warns(UserWarning, match=r"model.layers.1.mlp.up_proj.weight'? \(2\)"):
        model = lowbit.from_pretrained(d, quantization=lowbit.config("int8"), nonfinite="clamp")
    layer = model.model.layers[1].mlp.up_proj
    w = layer.fmt.decode(layer.canonical_tensors())
    assert torch.isfinite(w).all() and w[3, 5] == 0
    assert w[7, 1] == w.max()  # +Inf became the largest finite magnitude of the tensor
    with pytest.raises(ConfigError, match="nonfinite='ignore'"):
        lowbit.from_pretrained(d, nonfinite="ignore")


# ---- quantization_config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, names", [
    (dict(method="sparkle"), ["'sparkle'", "int4"]),  # lists the valid names
    (dict(colour="red"), ["'colour'"]),
    (dict(bits="4"), ["bits='4'", "integer"]),
    (dict(group_size=32.0), ["group_size=32.0"]),
    (dict(bits=5), ["bits=5", "[2, 3, 4, 8]"]),
    (dict(group_size=48), ["group_size=48"]),
    (dict(quant_method="sparkle-q"), ["'sparkle-q'"]),
    (dict(layers=["x"]), ["layers", "list"]),
], ids=["unknown-method", "unknown-field", "bits-str", "group-float", "bits-range", "group-range", "quant-method",
        "layers-type"])
def test_bad_stored_quantization_config(tmp_path, sources, change, names):
    d = _copy(sources["int4"], tmp_path / "m")
    helpers.edit_quant_config(d, **change)
    expect_error(ConfigError, _load(d), names=names, watch=tmp_path)


def test_config_naming_another_format_than_the_tensors(tmp_path, sources):
    """A lowbit folder whose config says GPTQ is read as GPTQ, and its tensors are not GPTQ's."""
    d = _copy(sources["int4"], tmp_path / "m")
    helpers.edit_quant_config(d, quant_method="gptq")
    expect_error(CheckpointError, _load(d), names=["GPTQ", "qzeros", "not the format its config names"], watch=tmp_path)


@pytest.mark.parametrize("fields, names", [
    (dict(bits=5), ["bits=5"]),
    (dict(bits=16), ["bits=16"]),
    (dict(group_size=100), ["group_size=100"]),
    (dict(symmetric="yes"), ["symmetric='yes'"]),
    (dict(colour="red"), ["'colour'"]),
])
def test_bad_caller_config(fields, names):
    with pytest.raises(ConfigError) as err:
        lowbit.config("rtn", **fields)
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in names), msg


def test_bad_quantization_argument(tmp_path, sources):
    d = _copy(sources["llama"], tmp_path / "m")
    expect_error(ConfigError, _load(d, 4), names=["quantization=4"], watch=tmp_path)
    expect_error(lowbit.errors.RegistryError, _load(d, "int5"), names=["'int5'", "int4"], watch=tmp_path)


# ---- saving -------------------------------------------------------------------------------------------------------

def test_output_is_a_file(tmp_path, sources):
    out = tmp_path / "out"
    out.write_text("keep me")
    expect_error(SaveError, lambda: lowbit.save_pretrained(sources["model"], out), names=[out, "file"], watch=tmp_path)


def test_output_folder_non_empty_without_model(tmp_path, sources):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not a model")
    expect_error(SaveError, lambda: lowbit.save_pretrained(sources["model"], out), names=[out, "overwrite"],
                 watch=tmp_path)
    lowbit.save_pretrained(sources["model"], out, overwrite=True)  # the way out the message names
    assert (out / "config.json").is_file() and (out / "holiday.jpg").read_bytes() == b"\xff\xd8 not a model"


def test_unwritable_output_parent(tmp_path, sources):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if not os.access(parent, os.W_OK):
            expect_error(SaveError, lambda: lowbit.save_pretrained(sources["model"], parent / "out"),
                         names=[parent, "permission"], watch=tmp_path)
            return
        # root may write anywhere: run the CLI as root without the capability that overrides permission bits
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and no setpriv (util-linux) to drop CAP_DAC_OVERRIDE, so a chmod 0500 folder "
                        "stays writable here")
        before = helpers.snapshot(tmp_path)
        runner = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-m", "lowbit"]
        r = helpers.run_cli(["quantize", sources["llama"], parent / "out", "--method", "int4"], runner=runner)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and str(parent) in r.stderr and "permission" in r.stderr
        assert helpers.snapshot(tmp_path) == before
    finally:
        parent.chmod(0o700)


def _refuses_mkdir(folder: Path) -> bool:
    probe = folder / f"lowbit-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError:
        return True
    probe.rmdir()
    return False


@pytest.mark.parametrize("case", ["missing-parent", "parent-os-access-calls-writable"])
def test_output_parent_where_mkdir_fails(sources, case):
    sysfs = Path("/sys")
    if not sysfs.is_dir() or not _refuses_mkdir(sysfs):
        pytest.skip("no /sys here that refuses mkdir, so no read-only folder to write into")
    if case == "missing-parent":
        parent = sysfs / "lowbit-no-such-dir"  # the parent must be created, and cannot be
    else:
        parent = sysfs
        if not os.access(parent, os.W_OK):
            pytest.skip("os.access already says /sys is not writable (not root): the SaveError path is taken")
    out = parent / "lowbit-out"
    with pytest.raises(SaveError) as err:
        lowbit.save_pretrained(sources["model"], out)
    assert "\n" not in str(err.value) and str(parent) in str(err.value)
    assert not out.exists()


@pytest.mark.parametrize("size", ["lots", "", "2XB", "-1GB", "1e3KB", -1, 0, 1.5, None, True])
def test_max_shard_size_garbage(tmp_path, sources, size):
    expect_error(SaveError, lambda: lowbit.save_pretrained(sources["model"], tmp_path / "out", max_shard_size=size),
                 names=[f"max_shard_size={size!r}", "2GB"], watch=tmp_path)


def test_disk_full_on_the_second_shard(tmp_path, sources):
    """The writer fails mid-save as a full disk makes it: a SaveError naming the cause; the old model is untouched
    and no temporary folder is left."""
    from lowbit.loading import save

    out = tmp_path / "q"
    lowbit.save_pretrained(sources["model"], out)
    written = []

    def full(tensors, path, metadata=None):
        if written:
            with open(path, "wb") as f:
                f.write(b"\0" * 100)  # a partial file, as a full disk leaves it
            raise OSError(28, "No space left on device")
        written.append(path)
        return save_file(tensors, path, metadata=metadata)

    from safetensors.torch import save_file

    original = save.save_file
    save.save_file = full
    try:
        expect_error(SaveError, lambda: lowbit.save_pretrained(sources["model"], out, max_shard_size="20KB",
                                                               overwrite=True),
                     names=[str(out), "No space left on device", "free some space"], watch=tmp_path)
    finally:
        save.save_file = original


def test_tokenizer_files_absent_loads_with_one_warning(tmp_path, sources):
    from lowbit.errors import MissingTokenizerWarning

    d = _copy(sources["llama"], tmp_path / "m")
    before = helpers.snapshot(tmp_path)
    with pytest.warns(MissingTokenizerWarning) as caught:
        model = lowbit.from_pretrained(d, quantization=lowbit.config("int8"))
    ours = [w for w in caught if issubclass(w.category, MissingTokenizerWarning)]
    assert len(ours) == 1 and str(d) in str(ours[0].message) and "tokenizer.json" in str(ours[0].message)
    assert model.model.layers[0].self_attn.q_proj.bits_per_weight() > 8
    assert helpers.snapshot(tmp_path) == before
    (d / "tokenizer_config.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingTokenizerWarning)
        lowbit.from_pretrained(d, quantization=lowbit.config("int8"))
