"""Hostile files and the tracebacks of the red-team list: links out of the folder, FIFOs and devices, configs that
promise more than the files hold, deep JSON, names with control characters, indexes that verify cannot trust, and
inputs that ended in a traceback or a misleading message. Each gives one line and leaves the files as they were."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import helpers
import pytest

import lowbit
from lowbit import cli
from lowbit.errors import CheckpointError, ConfigError, SaveError

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return helpers.make_llama_with_tokenizer(tmp_path_factory.mktemp("hostile") / "llama")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, base) -> Path:
    return lowbit.quantize_folder(base, tmp_path_factory.mktemp("saved") / "q", lowbit.config("int4", group_size=32),
                                  max_shard_size="60KB")


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst, symlinks=True))


def one_line(exc, call, *names, watch: Path | None = None, seconds: int = 30) -> str:
    before = helpers.snapshot(watch) if watch else None
    with helpers.deadline(seconds), pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert msg.strip() and "\n" not in msg and "\x1b" not in msg, msg
    for name in names:
        assert name in msg, (name, msg)
    if watch:
        assert helpers.snapshot(watch) == before
    return msg


# ---- case 9: links out of the folder ------------------------------------------------------------------------

def test_a_tokenizer_file_linking_out_of_the_folder_is_never_copied(base, tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    src = _copy(base, tmp_path / "src")
    (src / "tokenizer.json").unlink()
    (src / "tokenizer.json").symlink_to(secret)
    one_line(CheckpointError, lambda: lowbit.quantize_folder(src, tmp_path / "out", "int8"), "tokenizer.json",
             "symbolic link", watch=tmp_path)
    one_line(CheckpointError, lambda: lowbit.from_pretrained(src), "outside the model folder")


def test_a_link_inside_the_folder_is_followed(base, tmp_path):
    src = _copy(base, tmp_path / "src")
    (src / "blobs").mkdir()
    os.replace(src / "tokenizer.json", src / "blobs" / "tok")
    (src / "tokenizer.json").symlink_to("blobs/tok")
    out = lowbit.quantize_folder(src, tmp_path / "out", "int8")
    assert not (out / "tokenizer.json").is_symlink()
    assert (out / "tokenizer.json").read_bytes() == (src / "blobs" / "tok").read_bytes()


# ---- case 10: FIFOs, devices, folders where files belong -------------------------------------------------------

@pytest.mark.parametrize("what", ["fifo", "dev-zero", "folder"])
@pytest.mark.parametrize("target", [INDEX, "shard", "config.json"])
def test_special_files_are_refused_before_opening(saved, tmp_path, what, target):
    folder = _copy(saved, tmp_path / "q")
    name = sorted(p.name for p in folder.glob("model-*.safetensors"))[0] if target == "shard" else target
    (folder / name).unlink()
    if what == "fifo":
        os.mkfifo(folder / name)
    elif what == "dev-zero":
        (folder / name).symlink_to("/dev/zero")
    else:
        (folder / name).mkdir()
    kind = {"fifo": "a FIFO", "dev-zero": "a special file", "folder": "a folder"}[what]
    one_line(CheckpointError, lambda: lowbit.from_pretrained(folder), name, kind, seconds=20)
    one_line(CheckpointError, lambda: lowbit.verify(folder), name, kind, seconds=20)


# ---- case 11: sizes, depth, names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("num_hidden_layers", 100000), ("hidden_size", 10**7),
                                        ("vocab_size", 10**9), ("intermediate_size", 10**8)])
def test_config_sizes_beyond_the_tensors_fail_before_the_skeleton(base, tmp_path, key, value):
    folder = _copy(base, tmp_path / "m")
    helpers.edit_config(folder, **{key: value})
    start = time.perf_counter()
    one_line(CheckpointError, lambda: lowbit.from_pretrained(folder, quantization="int8"), f"{key}={value}",
             watch=tmp_path)
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("target", ["config.json", INDEX])
def test_deeply_nested_json_is_one_line(saved, tmp_path, target):
    folder = _copy(saved, tmp_path / "q")
    text = json.dumps(json.loads((folder / target).read_text()))
    (folder / target).write_text(text[:-1] + ', "deep": ' + "[" * 100000 + "]" * 100000 + "}")
    one_line(CheckpointError, lambda: lowbit.from_pretrained(folder), target, "deep")


def test_a_tensor_name_with_control_characters_is_escaped(base, tmp_path, capsys):
    folder = _copy(base, tmp_path / "m")
    evil = "model.layers.0.evil\n\x1b[2Jweight"
    helpers.add_tensor(folder, evil, helpers.load_tensors(folder / "model.safetensors")["model.norm.weight"])
    msg = one_line(CheckpointError, lambda: lowbit.from_pretrained(folder, quantization="int8"), "evil")
    assert "\\n\\x1b[2J" in msg
    assert cli.main(["quantize", str(folder), str(tmp_path / "out"), "--method", "int8"]) == 2
    err = capsys.readouterr().err.rstrip("\n").split("\n")[-1]  # after the progress bar's own line
    assert err.startswith("lowbit: error: ") and "evil\\n\\x1b[2J" in err and "\x1b" not in err


# ---- case 12: verify ------------------------------------------------------------------------------------------

def _edit_index(folder: Path, change) -> None:
    index = json.loads((folder / INDEX).read_text())
    change(index)
    (folder / INDEX).write_text(json.dumps(index))


VERIFY_CASES = {
    "non-string hash": (lambda i: i["metadata"]["sha256"].update({k: 12345 for k in i["metadata"]["sha256"]}),
                        "12345"),
    "hash list": (lambda i: i["metadata"].update(sha256=["x"]), "no shard hashes"),
    "metadata list": (lambda i: i.update(metadata=[1, 2]), "no shard hashes"),
    "empty weight_map": (lambda i: i.update(weight_map={}), "no valid weight_map"),
    "shard left out": (lambda i: i.update(weight_map={k: v for k, v in i["weight_map"].items()
                                                      if v != min(i["weight_map"].values())}), "not in"),
}


@pytest.mark.parametrize("case", list(VERIFY_CASES))
def test_verify_refuses_an_index_it_cannot_trust(saved, tmp_path, case, capsys):
    change, expected = VERIFY_CASES[case]
    folder = _copy(saved, tmp_path / "q")
    _edit_index(folder, change)
    one_line(CheckpointError, lambda: lowbit.verify(folder), expected, watch=tmp_path)
    assert cli.main(["verify", str(folder)]) == 2
    assert "match their sha256" not in capsys.readouterr().out


def test_verify_finds_a_tensor_the_config_implies_but_the_files_lack(saved, tmp_path):
    folder = _copy(saved, tmp_path / "q")
    shard = min(p.name for p in folder.glob("model-*.safetensors"))
    tensors = helpers.load_tensors(folder / shard)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    helpers.save_tensors(folder / shard, tensors)
    _edit_index(folder, lambda i: i["weight_map"].pop(dropped))
    _edit_index(folder, lambda i: i["metadata"]["sha256"].update({shard: helpers.contents(folder)[shard]}))
    one_line(CheckpointError, lambda: lowbit.verify(folder), dropped, "lacks")


# ---- the tracebacks and misleading messages ---------------------------------------------------------------------

@pytest.mark.parametrize("value", [["lowbit"], "int4", 4])
def test_quantization_config_not_an_object(saved, tmp_path, value):
    folder = _copy(saved, tmp_path / "q")
    helpers.edit_config(folder, quantization_config=value)
    one_line(CheckpointError, lambda: lowbit.from_pretrained(folder), "quantization_config", "expected an object")


def _eval(folder: Path, tmp_path: Path, *extra) -> int:
    text = tmp_path / "t.txt"
    text.write_text(helpers.CALIB_TEXT[:3000])
    return cli.main(["eval", str(folder), "--text", str(text), *extra])


def _last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lowbit: error: "), err
    return err


def test_eval_ctx_beyond_the_positions(base, tmp_path, capsys):
    assert _eval(base, tmp_path, "--ctx", "1000") == 2
    assert "max_position_embeddings=128" in _last_error(capsys)


def test_eval_token_ids_beyond_the_vocabulary(tmp_path, capsys):
    folder = helpers.make_llama_with_tokenizer(tmp_path / "m", vocab_size=64)  # the char tokenizer gives ids to 126
    assert _eval(folder, tmp_path, "--ctx", "64") == 2
    assert "beyond the model's vocabulary of 64" in _last_error(capsys)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"model": 5}'])
def test_eval_with_a_malformed_tokenizer(base, tmp_path, capsys, content):
    folder = _copy(base, tmp_path / "m")
    (folder / "tokenizer.json").write_text(content)
    assert _eval(folder, tmp_path, "--ctx", "64") == 2
    assert "no usable tokenizer" in _last_error(capsys)


def test_an_output_name_of_250_characters_is_saved(base, tmp_path):
    out = lowbit.quantize_folder(base, tmp_path / ("q" * 250), "int8")
    lowbit.from_pretrained(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q" * 250]


def test_output_is_the_current_folder(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line(SaveError, lambda: lowbit.quantize_folder(base, ".", "int8"), "current folder", watch=tmp_path)


def test_output_is_a_symbolic_link(base, saved, tmp_path):
    target = _copy(saved, tmp_path / "model")
    (tmp_path / "link").symlink_to(target)
    one_line(SaveError, lambda: lowbit.quantize_folder(base, tmp_path / "link", "int8", overwrite=True),
             "symbolic link", watch=tmp_path)


def test_device_meta_is_named_as_the_cause(base):
    one_line(ConfigError, lambda: lowbit.from_pretrained(base, quantization="int8", device="meta"), "device='meta'")


def test_an_output_name_that_is_not_utf8(base, tmp_path):
    out = tmp_path / os.fsdecode(b"q\xff")
    one_line(SaveError, lambda: lowbit.quantize_folder(base, out, "int8"), "UTF-8", watch=tmp_path)
