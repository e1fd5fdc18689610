"""``lowbit demo``: each row is printed when it is measured (not all at the end), with the CPU named."""

from __future__ import annotations

import subprocess
import sys

import pytest

import helpers
from lowbit import realmodels


@pytest.mark.realmodel
def test_rows_arrive_while_the_demo_runs():
    if not realmodels.available("minilm"):
        pytest.skip(f"minilm's package is not installed: {realmodels.MODELS['minilm'].pip}")
    proc = subprocess.Popen([sys.executable, "-m", "lowbit", "demo", "--model", "minilm"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=helpers.cli_env())
    try:
        lines, running_at_first_row = [], None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("fp32 (original)"):
                running_at_first_row = proc.poll() is None  # the int8 and int4 rows are still to come
        err = proc.stderr.read()
        assert proc.wait(timeout=600) == 0, err
    finally:
        proc.kill()
    assert running_at_first_row, lines
    rows = {line.split("  ")[0]: line.split() for line in lines if line.startswith(("fp32", "int8", "int4"))}
    assert list(rows) == ["fp32 (original)", "int8 per-channel (+ int8 embedding)", "int4 g128 (+ int8 embedding)"]
    assert rows["fp32 (original)"][4] == "1.00x" and rows["fp32 (original)"][5] == "1.0000"  # cosine with itself
    assert float(rows["int4 g128 (+ int8 embedding)"][-4].rstrip("x")) > 3  # several times smaller
    assert lines[1].startswith("on ") and "cores" in lines[1] and "bf16 units" in lines[1]
    assert "loading: 100%" in err  # the bars go to stderr
    assert lines[-1].startswith("demo done in")
