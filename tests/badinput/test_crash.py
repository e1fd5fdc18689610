"""A save killed with SIGKILL mid-write: the previous model stays whole, and the next save cleans the dead
process's temporary folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import helpers

import lowbit

CHILD = """
import sys, time
import lowbit
from lowbit.loading import save

real = save.save_file

def slow(tensors, path, metadata=None):
    real(tensors, path, metadata=metadata)
    open(sys.argv[3], "w").close()  # one shard is on disk: the parent may kill us now
    time.sleep(120)

save.save_file = slow
model = lowbit.from_pretrained(sys.argv[1], quantization=lowbit.config("int4", group_size=32))
lowbit.save_pretrained(model, sys.argv[2], max_shard_size="20KB", overwrite=True)
"""


def test_sigkill_mid_save_keeps_the_old_model_and_the_next_save_cleans_up(tmp_path):
    src = helpers.make_llama(tmp_path / "src")
    out = tmp_path / "q"
    lowbit.save_pretrained(lowbit.from_pretrained(src, quantization=lowbit.config("int8")), out)
    before = helpers.snapshot(out)
    marker = tmp_path / "one-shard-written"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(out), str(marker)], env=helpers.cli_env())
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert child.poll() is None, "the saving process ended before writing a shard"
            assert time.monotonic() < deadline, "the saving process wrote no shard in time"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert helpers.snapshot(out) == before  # the old model is whole
    (stale,) = tmp_path.glob(f".q.tmp-{child.pid}-*")  # the killed save left its partial folder, with its token
    assert any(stale.iterdir()) and list(tmp_path.glob(f".q.lock-{child.pid}-*"))  # and its lock
    again = lowbit.from_pretrained(out)  # and the old model still loads
    assert again.config.quantization_config["bits"] == 8

    lowbit.save_pretrained(lowbit.from_pretrained(src, quantization=lowbit.config("int4", group_size=32)), out,
                           overwrite=True)
    assert not stale.exists() and not list(tmp_path.glob(".q.lock-*"))  # the dead holder's folder and lock are gone
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 4
    assert lowbit.verify(out)
