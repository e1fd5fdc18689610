"""Adding a method touches two files: its module in lowbit/methods/ and its test.

The worked example below is such a module (a ternary rtn: two bits, symmetric, per output channel); it is dropped
into a copy of the package, and nothing else is edited: ``lowbit.methods`` finds and imports it, so it is listed,
configurable and quantizes a model.
"""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import lowbit.methods

SRC = Path(lowbit.__file__).resolve().parent

TERNARY = '''"""``ternary``: weights in {-s, 0, s}, one scale per output channel (a worked example)."""

from torch import nn

from lowbit.config import QuantConfig
from lowbit.formats import IntFormat
from lowbit.quantizer import Quantizer
from lowbit.registry import register_method


class TernaryConfig(QuantConfig):
    """Ternary weights: codes -1, 0, 1 times one scale per output channel."""

    method = "ternary"


class TernaryQuantizer(Quantizer):
    config_cls = TernaryConfig

    def weight_format(self, name: str, module: nn.Linear) -> IntFormat:
        return IntFormat(bits=2, group_size=None, symmetric=True)


register_method(TernaryConfig, TernaryQuantizer)
'''

CHECK = '''
import sys

import torch
import lowbit

assert lowbit.__file__.startswith(sys.argv[1]), lowbit.__file__  # the copy, not the checkout

assert "ternary" in lowbit.methods(), lowbit.methods()
model = lowbit.quantize_(torch.nn.Sequential(torch.nn.Linear(64, 8)), lowbit.config("ternary"))
codes = model[0].fmt.decode(model[0].canonical_tensors()) / model[0].canonical_tensors()["scales"].float()
assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0}
print("ok")
'''


def test_every_module_of_the_package_is_imported():
    names = [m.name for m in pkgutil.iter_modules(lowbit.methods.__path__) if not m.name.startswith("_")]
    assert names and all(f"lowbit.methods.{name}" in sys.modules for name in names)


def test_a_new_method_module_registers_itself(tmp_path):
    copy = tmp_path / "src" / "lowbit"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "methods" / "ternary.py").write_text(TERNARY)
    run = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
