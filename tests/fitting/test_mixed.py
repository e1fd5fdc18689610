"""A mixed-method folder: each layer stored exactly as its candidate stores it alone, saved and loaded again by
lowbit and by transformers, and a plan whose calibrated layers go through the runner."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_tensors, logits, make_llama, make_llama_with_tokenizer, token_ids

import lowbit
from lowbit.errors import ConfigError
from lowbit.fitting.candidates import layout, parse_candidates
from lowbit.fitting.run import fit
from lowbit.formats import IntFormat
from lowbit.loading.checkpoint import open_checkpoint
from lowbit.methods.mixed import MixedConfig, mixed_config

CANDIDATES = "int8,int4,hqq4,nf4,int4g0"  # int4g0: one scale per output channel
INT8_KEY = IntFormat(bits=8, group_size=None, symmetric=True).key()


def _plan(src):
    cands = parse_candidates(CANDIDATES, 32)
    lay = layout(open_checkpoint(src), cands)
    labels = list(cands)
    plan = {name: (labels[i % len(labels)], lay.formats[labels[i % len(labels)]][name])
            for i, name in enumerate(lay.names)}
    return cands, lay, plan


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    src = make_llama(root / "src")
    cands, lay, plan = _plan(src)
    cfg = mixed_config({label: cands[label] for label in cands}, plan)
    lowbit.quantize_folder(src, root / "mixed", cfg)
    uniform = {label: lowbit.quantize_folder(src, root / label, c) for label, c in cands.items()}
    return src, root, lay, plan, uniform


def test_every_layer_is_stored_as_its_candidate_stores_it(folders):
    src, root, lay, plan, uniform = folders
    mixed = load_tensors(root / "mixed" / "model.safetensors")
    alone = {label: load_tensors(folder / "model.safetensors") for label, folder in uniform.items()}
    assert len({label for label, _ in plan.values()}) == 5
    for name, (label, fmt) in plan.items():
        for part in fmt.tensor_names():
            key = f"{name}.{part}"
            assert torch.equal(mixed[key], alone[label][key]), key
    assert set(mixed) == set(alone["int8"]) - {k for k in alone["int8"] if k.endswith(".scales")} | {
        k for k in mixed if k.endswith((".scales", ".zeros", ".absmax"))}


def test_config_records_the_plan_and_reloads_bit_exact(folders, tmp_path):
    src, root, lay, plan, _ = folders
    qc = json.loads((root / "mixed" / "config.json").read_text())["quantization_config"]
    assert qc["method"] == "mixed" and len(qc["plan"]) == len(lay.names)
    model = lowbit.from_pretrained(root / "mixed")
    info = {x.name: x for x in lowbit.inspect(model).layers}
    for name, (label, fmt) in plan.items():
        assert info[name].format == fmt.describe() and info[name].origin == f"fit: {label}"
    lowbit.save_pretrained(model, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (root / "mixed" / "model.safetensors").read_bytes()


def test_transformers_loads_the_mixed_folder(folders):
    from transformers import AutoModelForCausalLM

    src, root, *_ = folders
    ids = token_ids()
    ours = logits(lowbit.from_pretrained(root / "mixed"), ids)
    theirs = logits(AutoModelForCausalLM.from_pretrained(root / "mixed"), ids)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    fp = logits(lowbit.from_pretrained(src), ids)
    assert (ours - fp).norm() / fp.norm() < 0.3  # 4-bit on a random tiny model: about 0.15


def test_a_plan_that_does_not_match_the_checkpoint_is_refused(folders, tmp_path):
    src, root, lay, plan, _ = folders
    name = lay.names[0]
    other = parse_candidates("int3", 32)["int3"]
    wrong = dict(plan)
    wrong[name] = ("int8", lay.formats["int4"][name])  # int8 does not store int4 g32
    with pytest.raises(ConfigError, match="run lowbit fit again"):
        lowbit.quantize_folder(src, tmp_path / "x", mixed_config({"int8": other.replace(bits=8, group_size=None,
                                                                                          symmetric=True),
                                                                 **parse_candidates(CANDIDATES, 32)}, wrong))


@pytest.mark.parametrize("entry, match", [
    ({"candidates": ["int4"]}, "malformed"),
    ({"candidates": ['a {"method": "awq"}']}, "cannot be mixed"),
    ({"plan": ['m.x int4 {"kind": "int"}']}, "mixed.plan.'m.x'.: format key"),
    ({"candidates": ['int4 {"method": "rtn"}'], "plan": ['m.x int8 ' + INT8_KEY]},
     "candidate 'int8', which mixed.candidates does not define"),
])
def test_damaged_config_is_one_line(entry, match):
    with pytest.raises(ConfigError, match=match) as e:
        MixedConfig(**entry)
    assert "\n" not in str(e.value)


def test_switches_turn_on_the_methods_settings():
    cands = parse_candidates("gptq3+act_order+mse,gptq4,nf4+double_quant,int4g128,gptq4g0+act_order", 32)
    assert cands["gptq3+act_order+mse"].replace(act_order=False, mse=False) == cands["gptq4"].replace(bits=3)
    assert cands["gptq3+act_order+mse"].act_order and cands["gptq3+act_order+mse"].mse
    assert not cands["gptq4"].act_order and cands["nf4+double_quant"].double_quant
    assert cands["int4g128"].group_size == 128
    assert cands["gptq4g0+act_order"].group_size is None and cands["gptq4g0+act_order"].act_order
    numbers = parse_candidates("gptq3+fp_targets+fp_alpha=0.5+damp=0.05+block_size=64", 32)
    assert numbers["gptq3+fp_targets+fp_alpha=0.5+damp=0.05+block_size=64"] == \
        cands["gptq4"].replace(bits=3, fp_targets=True, fp_alpha=0.5, damp=0.05, block_size=64)


@pytest.mark.parametrize("gptq, bpw", [("gptq4", 4.9), ("gptq4+act_order+mse", 5.6)])  # act_order stores g_idx
def test_fit_with_a_calibrated_candidate_runs_the_runner(tmp_path, gptq, bpw):
    src = make_llama_with_tokenizer(tmp_path / "src")
    res = fit(src, tmp_path / "out", f"{bpw}bpw", f"int8,{gptq}", group_size=32, samples=2, seq_len=32,
              calib_samples=4, calib_seq_len=32)
    assert res.plan.linear_bytes <= bpw * res.layout.params / 8
    assert gptq in res.plan.counts()
    assert res.plan.estimator == "output-fisher"  # auto, with a calibrated candidate
    if "act_order" in gptq:  # the switch reached the quantizer: its layers store their column order
        assert any(name.endswith(".g_idx") for name in load_tensors(tmp_path / "out" / "model.safetensors"))
    model = lowbit.from_pretrained(tmp_path / "out")
    ids = token_ids()
    fp = logits(lowbit.from_pretrained(src), ids)
    assert (logits(model, ids) - fp).norm() / fp.norm() < 0.3
    saved = json.loads((tmp_path / "out" / "fit_plan.json").read_text())
    assert saved["bpw"] == res.plan.bpw and len(saved["layers"]) == len(res.layout.names)


def test_calibrated_layers_are_quantized_in_the_blocks_call_order(tmp_path, monkeypatch):
    """Two GPTQ candidates (one with fp_targets) take alternate layers: each stage (q/k/v, o, gate/up, down) is
    quantized before the next whichever candidate holds it, so every layer is calibrated on the inputs it will see."""
    from lowbit.methods.gptq import GptqQuantizer

    src = make_llama_with_tokenizer(tmp_path / "src")
    cands = parse_candidates("gptq4,gptq3+fp_targets", 32)
    lay = layout(open_checkpoint(src), cands)
    plan = {name: (label, lay.formats[label][name]) for name, label in
            ((n, "gptq4" if i % 2 else "gptq3+fp_targets") for i, n in enumerate(lay.names))}
    seen: list[tuple[str, bool]] = []
    original = GptqQuantizer.calibrate_stage

    def record(self, block, prefix, inputs, linears, reference=None):
        seen.extend((n, reference is not None) for n in linears)
        return original(self, block, prefix, inputs, linears, reference)

    monkeypatch.setattr(GptqQuantizer, "calibrate_stage", record)
    lowbit.quantize_calibrated(src, tmp_path / "out", mixed_config(cands, plan), text="abc " * 400, samples=4,
                               seq_len=32)
    order = [".q_proj", ".k_proj", ".v_proj", ".o_proj", ".gate_proj", ".up_proj", ".down_proj"]
    stage = {s: i for i, group in enumerate(([0, 1, 2], [3], [4, 5], [6])) for j in group for s in [order[j]]}
    for block in ("model.layers.0.", "model.layers.1."):
        mine = [stage[n[n.rindex("."):]] for n, _ in seen if n.startswith(block)]
        assert len(mine) == 7 and mine == sorted(mine), seen
    assert all(fp == (plan[n][0] == "gptq3+fp_targets") for n, fp in seen)  # the reference went to fp_targets only
