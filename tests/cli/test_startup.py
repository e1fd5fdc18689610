"""``lowbit --help``, ``lowbit methods`` and usage errors import no heavy package (torch, transformers, triton).

Each case runs ``python -m lowbit`` in a fresh interpreter that prints ``sys.modules`` at exit; the wall time
itself is measured by benchmarks/cli_startup.py, not here.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import helpers

HEAVY = ("torch", "transformers", "triton", "accelerate", "safetensors", "numpy", "huggingface_hub")


RUN = ("import atexit, runpy, sys\n"
       "atexit.register(lambda: sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
       "runpy.run_module('lowbit', run_name='__main__', alter_sys=True)\n")


def _imported(args: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    done = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True,
                          env=helpers.cli_env(), timeout=300)
    listing = [line for line in done.stderr.splitlines() if line.startswith("MODULES ")]
    assert len(listing) == 1, done.stderr[-2000:]
    done.stderr = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("MODULES "))
    return done, set(listing[0].split()[1:])


@pytest.mark.parametrize("args, rc, shows", [
    (["--help"], 0, "quantize"),
    (["quantize", "--help"], 0, "--group-size"),
    (["methods"], 0, "group_size=128"),
    (["--version"], 0, "lowbit "),
    (["quantize", "src", "out", "--method", "in4"], 2, "did you mean 'int4'"),
    (["quantize", "src"], 2, "--method"),
    (["squash"], 2, "'squash'"),
])
def test_no_heavy_import(args, rc, shows):
    done, modules = _imported(args)
    assert done.returncode == rc, done.stderr[-2000:]
    assert shows in done.stdout + done.stderr
    assert "lowbit.cli" in modules  # the listing is real: it names what was imported
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, heavy[:10]


def test_real_work_still_loads_the_methods():
    """A command that does work imports the methods (the registry loads them on first use)."""
    done, modules = _imported(["quantize", "no/such/folder", "out", "--method", "int4"])
    assert done.returncode == 2 and "no/such/folder" in done.stderr.splitlines()[-1]
    assert {"torch", "lowbit.methods.rtn"} <= modules
