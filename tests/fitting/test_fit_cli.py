"""``lowbit fit`` on the command line: the plan table, the achieved size against the budget, the plot, a budget
above full precision, and bad input as one line with exit 2 (``lowbit.fit`` itself for the other bad inputs)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_tensors, make_llama_with_tokenizer, run_cli

from lowbit.errors import LowbitError
from lowbit.fitting.run import fit


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_llama_with_tokenizer(tmp_path_factory.mktemp("fit") / "src")


SMALL = ["--group-size", "32", "--samples", "2", "--seq-len", "32"]
SMALL_API = {"group_size": 32, "samples": 2, "seq_len": 32}


def test_fit_prints_the_plan_and_stays_within_the_budget(src, tmp_path):
    out = tmp_path / "out"
    r = run_cli(["fit", src, out, "--budget", "4.6bpw", "--candidates", "int8,int4,int3", *SMALL,
                 "--plot", tmp_path / "plan.png"])
    assert r.returncode == 0, r.stderr
    assert "model.layers.1.mlp.down_proj" in r.stdout and "choice" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("budget 4.6bpw: achieved"))
    achieved = float(line.split("achieved ")[1].split(" bpw")[0])
    assert 4.3 < achieved <= 4.6
    plan = json.loads((out / "fit_plan.json").read_text())
    assert plan["bpw"] == pytest.approx(achieved, abs=1e-4) and {x["label"] for x in plan["layers"]} >= {"int4", "int3"}
    assert plan["estimator"] == "fisher"  # auto, with data-free candidates only
    assert (tmp_path / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_above_full_precision_keeps_the_model(src, tmp_path):
    out = tmp_path / "out"
    r = run_cli(["fit", src, out, "--budget", "40bpw", *SMALL])
    assert r.returncode == 0, r.stderr
    assert "holds the model at full precision" in r.stdout and "kept as it is" in r.stdout
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    mine, theirs = load_tensors(out / "model.safetensors"), load_tensors(src / "model.safetensors")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_bad_input_on_the_command_line_is_one_line_exit_2(src, tmp_path):
    r = run_cli(["fit", src, tmp_path / "out", "--budget", "4bpw", "--candidates", "int4,int9", *SMALL])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "unknown candidate 'int9'; expected a method or alias (fp4" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_size_budget_counts_the_whole_output(src, tmp_path):
    res = fit(src, tmp_path / "out", "130kB", "int8,int4,int3", **SMALL_API)
    assert res.plan.total_bytes <= 130_000
    assert sum(p.stat().st_size for p in (tmp_path / "out").glob("*.safetensors")) <= res.plan.total_bytes
    assert res.plan.budget_achieved.endswith(" MB") and len(res.plan.counts()) >= 2


@pytest.mark.parametrize("budget, candidates, expected", [
    ("2bpw", "int8,int4,int3", "below the smallest reachable size 3.7500 bpw (every layer int3)"),
    ("20kB", "int4", "below the smallest reachable size 0.1"),
    ("4bpw", "int4,awq", "cannot be chosen per layer; expected one of fp4"),
    ("four", "int4", "budget 'four' is not a budget"),
    ("4bpw", " , ", "no candidates given"),
    ("4bpw", "int4,gptq4+fast", "gptq has no switch 'fast'; expected one of +act_order, +fp_targets, +mse, +static_groups"),
    ("4bpw", "int4,gptq4+awq_balance", "gptq has no switch 'awq_balance'"),
    ("4bpw", "int4+quantize_lm_head", "rtn has no switch 'quantize_lm_head'; expected one of +symmetric"),
    ("4bpw", "int4,gptq4+fp_alpha=half", "candidate 'gptq4+fp_alpha=half': fp_alpha='half' is not a number"),
    ("4bpw", "int4,gptq4+bits=3", "gptq has no number 'bits'; expected one of +act_order"),
    ("4bpw", "int4,gptq4+fp_targets+fp_alpha=2", "gptq.fp_alpha=2.0 is out of range"),
    ("4bpw", "int4,nf4g0", "g0 (one scale per output channel) needs an integer method; nf4 stores blocks"),
])
def test_bad_input_is_one_line(src, tmp_path, budget, candidates, expected):
    with pytest.raises(LowbitError) as e:
        fit(src, tmp_path / "out", budget, candidates, **SMALL_API)
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_calibration_text_is_one_line(src, tmp_path):
    with pytest.raises(LowbitError, match="calibration") as e:
        fit(src, tmp_path / "out", "4bpw", "int4,int3", calib=tmp_path / "none.txt", **SMALL_API)
    assert "\n" not in str(e.value)
