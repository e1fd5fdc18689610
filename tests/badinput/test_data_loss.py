"""Nothing lost: outputs that overlap the source, existing folders, concurrent or dead saves and calibration runs,
a disk that fills during calibration, and saves that must survive power loss (fsync)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

import lowbit
from lowbit import cli
from lowbit.calibration import runner
from lowbit.errors import SaveError
from lowbit.loading import folder_lock

INT4 = ["--method", "int4", "--group-size", "32"]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """A tiny Llama with a tokenizer and a README.md, which lowbit does not copy."""
    folder = helpers.make_llama_with_tokenizer(tmp_path_factory.mktemp("src") / "llama")
    (folder / "README.md").write_text("the model card")
    return folder


def _cli_fails(argv: list[str], capsys, *names) -> str:
    capsys.readouterr()
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lowbit: error: "), err
    for name in names:
        assert str(name) in err, (name, err)
    return err


@pytest.mark.parametrize("extra", [[], ["--max-memory", "1GB"]])
def test_quantize_into_its_own_source_is_refused(src, tmp_path, capsys, extra):
    """Case 1: ``lowbit quantize SRC SRC`` replaced the source and deleted its README.md."""
    before = helpers.snapshot(src)
    _cli_fails(["quantize", src, src, *INT4, *extra], capsys, "is the source folder", src)
    _cli_fails(["quantize", src, src / "q4", *INT4, *extra], capsys, "is inside the source folder")
    _cli_fails(["quantize", src, src.parent, *INT4, "--overwrite", *extra], capsys, "holds the source folder")
    with pytest.raises(SaveError, match="is the source folder"):
        lowbit.quantize_folder(src, src, "int8", overwrite=True)
    assert helpers.snapshot(src) == before


def test_an_existing_model_folder_needs_overwrite_and_keeps_its_other_files(src, tmp_path, capsys):
    """Case 1: an existing model folder as OUT was replaced with its notes and runs/ without --overwrite."""
    out = tmp_path / "out"
    assert cli.main(["quantize", str(src), str(out), "--method", "int8"]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "runs").mkdir()
    (out / "runs" / "log.txt").write_text("run 1")
    before = helpers.snapshot(out)
    _cli_fails(["quantize", src, out, *INT4], capsys, out, "--overwrite")
    assert helpers.snapshot(out) == before
    assert cli.main(["quantize", str(src), str(out), *INT4, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "runs" / "log.txt").read_text() == "run 1"
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 4
    assert not (out / "README.md").exists()  # lowbit never copied it, and it was not there before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _lock(path: Path, **changes) -> None:
    path.write_text(json.dumps({**folder_lock.holder(), **changes}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_leftovers_are_removed_only_when_provably_abandoned(src, tmp_path, live_pid):
    """Case 3: a save from another PID namespace (a container, NFS) lost its in-progress temporary folder because
    its PID was not alive here. Now a lock names the holder; only dead holders of this host, boot and namespace,
    or a reused PID (another start time), lose their folders."""
    out = tmp_path / "q"
    dead = _dead_pid()
    cases = {  # token → (lock changes, removed?)
        f"{dead}-0000000a": ({"pid": dead}, True),
        f"{live_pid}-0000000b": ({"pid": live_pid, "start": folder_lock.start_time(live_pid)}, False),
        f"{live_pid}-0000000c": ({"pid": live_pid, "start": 1}, True),  # the PID was reused by another process
        f"{dead}-0000000d": ({"pid": dead, "pidns": "pid:[1]"}, False),  # another PID namespace
        f"{dead}-0000000e": ({"pid": dead, "host": socket.gethostname() + "-other"}, False),
        f"{dead}-0000000f": (None, False),  # no lock: nothing is proven
    }
    for token, (changes, _) in cases.items():
        (tmp_path / f".q.tmp-{token}").mkdir()
        (tmp_path / f".q.tmp-{token}" / "model.safetensors").write_bytes(b"partial")
        if changes is not None:
            _lock(tmp_path / f".q.lock-{token}", **changes)
    lowbit.quantize_folder(src, out, "int8")
    for token, (_, removed) in cases.items():
        assert (tmp_path / f".q.tmp-{token}").exists() != removed, token
        assert not (removed and (tmp_path / f".q.lock-{token}").exists()), token


def test_a_save_killed_after_its_renames_keeps_the_old_folders_other_files(src, tmp_path):
    """A save that died after putting the new model in place but before moving the old folder's notes over: the
    next save moves them into the output instead of deleting them with the old model."""
    out = lowbit.quantize_folder(src, tmp_path / "q", "int8")
    dead = _dead_pid()
    old = tmp_path / f".q.old-{dead}-00000001"
    helpers.make_llama(old)
    (old / "notes.txt").write_text("mine")
    _lock(tmp_path / f".q.lock-{dead}-00000001", pid=dead)
    lowbit.quantize_folder(src, out, "int4", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and not old.exists()


def test_a_live_calibration_run_to_the_same_output_is_left_alone(src, tmp_path, live_pid):
    """Case 2: two calibrated runs to one OUT shared ``.OUT.calib``; the second deleted the first one's work. Each
    run now has its own work folder; a live run's is never touched."""
    token = f"{live_pid}-0000abcd"
    other = tmp_path / f".out.calib-{token}"
    other.mkdir()
    (other / "state.json").write_text(json.dumps({"fingerprint": "x", "next_block": 1}))
    _lock(tmp_path / f".out.lock-{token}", pid=live_pid, start=folder_lock.start_time(live_pid))
    before = helpers.snapshot(other)
    out, _ = lowbit.quantize_calibrated(src, tmp_path / "out", lowbit.config("gptq", group_size=32),
                                        **helpers.FAST_CALIB)
    assert helpers.snapshot(other) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".out.calib-" + token, ".out.lock-" + token, "out"])
    lowbit.from_pretrained(out)


def test_a_disk_that_fills_during_calibration_gives_one_line_and_removes_the_work(src, tmp_path, monkeypatch):
    """Case 4: the work folder was written outside the save's error handling: a SafetensorError traceback, and the
    work folder stayed, filling the disk."""
    real = runner._save
    calls = []

    def full(tensors, path):
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(tensors, path)

    monkeypatch.setattr(runner, "_save", full)
    with pytest.raises(SaveError, match="No space left on device") as info:
        lowbit.quantize_calibrated(src, tmp_path / "out", lowbit.config("gptq", group_size=32), **helpers.FAST_CALIB)
    assert "\n" not in str(info.value) and "work folder" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_saves_fsync_the_shards_index_config_and_folders(src, tmp_path, monkeypatch):
    """Power loss, not only a killed process: every file of the new folder and the folders themselves reach the
    disk before the rename, and the parent after it."""
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    out = lowbit.quantize_folder(src, tmp_path / "q", "int8", max_shard_size="60KB")
    names = {Path(p).name for p in synced if ".q.tmp-" in p}
    expected = {p.name for p in out.iterdir()}
    assert expected <= names and "config.json" in names and "model.safetensors.index.json" in names
    assert any(Path(p).name.startswith(".q.tmp-") for p in synced)  # the temporary folder itself
    assert str(tmp_path) in synced  # the parent, after the rename
