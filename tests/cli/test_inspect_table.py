"""``lowbit inspect``: layers equal but for their block index are one row, the table fits the terminal, and the
compute dtype is shown (once, when every layer has the same)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import helpers
import lowbit
from lowbit.api import LayerInfo
from lowbit.commands.inspect import group_layers


def _layer(name, fmt="int4 g128 asym", shape=(64, 64), kernel="cpu_int4", reason="r"):
    return LayerInfo(name=name, kind="linear", method="rtn", format=fmt, shape=shape, bits_per_weight=4.25,
                     nbytes=100, compute_dtype="bfloat16", kernel=kernel, reason=reason)


def test_grouping():
    layers = [_layer(f"model.layers.{i}.mlp.down_proj") for i in (0, 1, 2, 5, 7, 8)]
    layers += [_layer("model.layers.3.mlp.down_proj", fmt="int4 g64 asym")]  # a group-size fallback: its own row
    layers += [_layer(f"model.layers.{i}.self_attn.q_proj", kernel="reference") for i in (0, 1)]
    layers += [_layer("lm_head", fmt="int8 per-channel sym")]
    rows = [(name, count, layer.format, layer.kernel) for name, count, layer in group_layers(layers)]
    assert rows == [("model.layers.{0-2,5,7-8}.mlp.down_proj", 6, "int4 g128 asym", "cpu_int4"),
                    ("model.layers.3.mlp.down_proj", 1, "int4 g64 asym", "cpu_int4"),
                    ("model.layers.{0-1}.self_attn.q_proj", 2, "int4 g128 asym", "reference"),
                    ("lm_head", 1, "int8 per-channel sym", "cpu_int4")]


@pytest.mark.parametrize("columns", [80, 120])
def test_table_fits_the_terminal(tmp_path, columns):
    src = helpers.make_llama(tmp_path / "llama")
    out = tmp_path / "q"
    lowbit.save_pretrained(lowbit.from_pretrained(src, quantization=lowbit.config("int4", group_size=32,
                                                                                  quantize_lm_head=True)), out)
    env = {**helpers.cli_env(), "COLUMNS": str(columns)}
    done = subprocess.run([sys.executable, "-m", "lowbit", "inspect", str(out)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(map(len, lines)) <= columns, "\n".join(lines)
    assert "15 layers in 8 groups" in " ".join(done.stdout.split())  # 7 projections x 2 blocks, and the head
    flat = " ".join(done.stdout.split())
    # one compute dtype for every layer: said once, in the title
    assert f"compute dtype {lowbit.inspect(out).layers[0].compute_dtype}" in flat
    assert len([line for line in lines if "int4 g32 asym" in line]) == 7
    notes = [line for line in lines if line.startswith("[")]
    assert len(notes) == len({x.reason for x in lowbit.inspect(out).layers})  # each kernel reason told once
