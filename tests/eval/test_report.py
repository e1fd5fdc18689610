"""lowbit.eval.report: per-layer SQNR / output error / bits per weight and perplexity, on tiny seeded checkpoints,
and one run on SmolLM2-135M (marker ``realmodel``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import LLAMA_LINEARS, char_tokenizer, data_dir, make_bert, make_llama, token_ids

import lowbit
from lowbit.errors import CheckpointError, ConfigError, DependencyError
from lowbit.eval import LayerReport, capture_inputs, layer_report, load_text, plot_report
from lowbit.eval.report import require_matplotlib

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs into the forest to hide. " * 60
NAMES = {f"model.layers.{i}.{m}" for i in range(2) for m in LLAMA_LINEARS}


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return char_tokenizer(make_llama(tmp_path_factory.mktemp("report") / "llama"))


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return token_ids(n=64, batch=3)


@pytest.fixture(scope="module")
def int4(llama, ids) -> LayerReport:
    return layer_report(llama, lowbit.config("int4", group_size=32), calib_ids=ids)


def test_int8_beats_int4_on_every_layer(llama, ids, int4):
    int8 = layer_report(llama, "int8", calib_ids=ids)
    assert [x.name for x in int8.layers] == [x.name for x in int4.layers] and {x.name for x in int4.layers} == NAMES
    for a, b in zip(int8.layers, int4.layers):
        assert a.sqnr_db > b.sqnr_db + 15, (a, b)  # ~6 dB per bit: 44.7 vs 21.8 dB measured
        assert a.output_error < b.output_error / 4, (a, b)  # 0.007 vs 0.08 measured
        assert 0 < a.output_error and math.isfinite(b.output_error)
    assert int4.mean_bits_per_weight == pytest.approx(4.75) and int8.mean_bits_per_weight == pytest.approx(
        (32768 * 8.5 + 8192 * 8.25) / 40960)  # int8 + one fp32 scale per row: K=64 → 8.5, down_proj K=128 → 8.25
    assert int4.params == 2 * (4 * 64 * 64 + 3 * 64 * 128) and int4.rows == 3 * 64 and int4.calib_tokens == 3 * 64
    assert int4.fp32 is None and int4.ppl_delta is None and "no eval text" in int4.note
    worst = int4.worst(3)
    assert worst[0].output_error == max(x.output_error for x in int4.layers) and len(worst) == 3
    assert worst[0].name in int4.summary() and "4.750 bits/weight over 14 layers" in int4.summary()


def test_output_error_and_sqnr_match_a_hand_computation(llama, ids):
    name = "model.layers.1.mlp.down_proj"
    cfg = lowbit.config("int4", group_size=32, compute_dtype="float32")
    report = layer_report(llama, cfg, calib_ids=ids)  # 192 rows < max_rows: every row is used
    got = next(x for x in report.layers if x.name == name)

    from transformers import LlamaForCausalLM

    ref = LlamaForCausalLM.from_pretrained(llama, dtype=torch.float32).eval()
    rows = []
    hook = ref.get_submodule(name).register_forward_hook(lambda m, a, o: rows.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.inference_mode():
        for sample in ids:
            ref(input_ids=sample[None])
    hook.remove()
    x = torch.cat(rows).double()
    w = ref.get_submodule(name).weight.detach().double()
    layer = lowbit.from_pretrained(llama, quantization=cfg).get_submodule(name)
    wq = layer.fmt.decode(layer.canonical_tensors()).double()
    y, yq = x @ w.T, x @ wq.T
    assert x.shape == (192, 128)
    assert got.output_error == pytest.approx(float((yq - y).norm() / y.norm()), rel=1e-4)
    assert got.sqnr_db == pytest.approx(float(10 * torch.log10(w.pow(2).sum() / (w - wq).pow(2).sum())), rel=1e-6)
    assert (got.shape, got.params, got.format, got.bits_per_weight) == ((64, 128), 8192, "int4 g32 asym", 4.75)


def test_capture_keeps_a_bounded_seeded_pick_of_rows(llama, ids):
    ref = lowbit.from_pretrained(llama)
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"]
    full = capture_inputs(ref, ids, names, max_rows=10_000)
    few = capture_inputs(ref, ids, names, max_rows=50, seed=3)
    assert full[names[2]].shape == (192, 128) and few[names[2]].shape == (50, 128)
    assert torch.equal(few[names[0]], few[names[1]])  # q and v read one input: the same rows
    assert torch.equal(few[names[2]], capture_inputs(ref, ids, names, max_rows=50, seed=3)[names[2]])
    assert not torch.equal(few[names[2]], capture_inputs(ref, ids, names, max_rows=50, seed=4)[names[2]])
    for row in few[names[2]]:  # every kept row is one of the layer's real input rows
        assert (full[names[2]] == row).all(dim=1).any()


def test_perplexity_and_json_round_trip(llama, tmp_path):
    report = layer_report(llama, lowbit.config("int4", group_size=32), calib_text=TEXT, eval_text=TEXT,
                          samples=2, seq_len=64, eval_tokens=256, ctx=64)
    assert report.fp32.tokens == report.quantized.tokens == 4 * 63 and report.note == ""
    assert report.ppl_delta == pytest.approx(report.quantized.ppl - report.fp32.ppl)
    assert report.ppl_delta_pct == pytest.approx(100 * report.ppl_delta / report.fp32.ppl)
    assert "perplexity" in report.summary() and f"{report.fp32.ppl:.2f}" in report.summary()
    exact = dataclasses.replace(report.layers[0], sqnr_db=math.inf)  # JSON has no inf: written as a string
    report = dataclasses.replace(report, layers=(exact, *report.layers[1:]))
    text = json.dumps(report.to_dict(), allow_nan=False)
    data = json.loads(text)
    assert data["mean_bits_per_weight"] == pytest.approx(4.75) and len(data["layers"]) == 14
    assert data["worst"][0] == report.worst(1)[0].name and data["layers"][0]["sqnr_db"] == "inf"
    assert data["config"]["group_size"] == 32 and data["fp32"]["ppl"] == report.fp32.ppl
    assert LayerReport.from_dict(data) == report


def test_plot(int4, tmp_path):
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (pip install 'lowbit[plot]')")
    out = plot_report(int4, tmp_path / "layers.png")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_plot_without_matplotlib_names_the_pip_command(int4, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(DependencyError, match=r"matplotlib.*pip install 'lowbit\[plot\]'"):
        require_matplotlib()
    with pytest.raises(DependencyError):
        plot_report(int4, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_encoder_gets_the_table_without_perplexity(tmp_path):
    bert = make_bert(tmp_path / "bert")
    report = layer_report(bert, "int8", calib_ids=token_ids(n=32, batch=2), eval_text=TEXT)
    assert len(report.layers) == 2 * 6 + 1  # q, k, v, attn out, intermediate, out per layer; pooler
    assert report.fp32 is None and "BertModel predicts no next token" in report.summary()


@pytest.mark.parametrize("kwargs, match", [
    ({"samples": 0}, "samples=0"),
    ({"samples": True}, "samples=True"),
    ({"seq_len": 1}, "seq_len=1"),
    ({"eval_tokens": -1}, "eval_tokens=-1"),
    ({"max_rows": 0}, "max_rows=0"),
    ({"calib_text": None}, "neither calib_ids nor calib_text"),
    ({"calib_text": "short text"}, r"10 tokens.*seq_len=64.*smaller seq_len"),
    ({"seq_len": 256}, "seq_len=256 .*max_position_embeddings=128"),
    ({"calib_text": None, "calib_ids": torch.tensor([[5, 500]])}, r"\[5, 500\].*vocab_size=128"),
    ({"calib_text": None, "calib_ids": torch.tensor([5, 6])}, r"shape \[2\]"),
])
def test_bad_inputs(llama, kwargs, match):
    args = {"calib_text": TEXT, "samples": 2, "seq_len": 64, **kwargs}
    with pytest.raises(ConfigError, match=match):
        layer_report(llama, "int8", **args)


def test_fewer_windows_than_samples_warns(llama):
    with pytest.warns(UserWarning, match="fills 1 of samples=3"):
        report = layer_report(llama, "int8", calib_text=TEXT[:100], samples=3, seq_len=64)
    assert report.calib_tokens == 64


def test_missing_text_and_quantized_reference(llama, tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "none.txt")):
        load_text(tmp_path / "none.txt")
    out = lowbit.save_pretrained(lowbit.from_pretrained(llama, quantization="int8"), tmp_path / "q")
    with pytest.raises(ConfigError, match="already quantized"):
        layer_report(out, "int8", calib_ids=token_ids())


@pytest.mark.realmodel
def test_smollm2_int4():
    from lowbit import realmodels

    if not realmodels.available("smollm2-135m"):
        pytest.skip(realmodels.MODELS["smollm2-135m"].pip)
    calib, evalf = data_dir() / "wiki.calib.txt", data_dir() / "wiki.eval.txt"
    report = layer_report(realmodels.model_path("smollm2-135m"), lowbit.config("int4", group_size=64),
                          calib_text=load_text(calib)[:50_000], eval_text=load_text(evalf)[:50_000],
                          samples=2, seq_len=256, eval_tokens=1024)
    assert len(report.layers) == 30 * 7 and report.mean_bits_per_weight == pytest.approx(4.375)
    assert all(math.isfinite(x.output_error) and 0 < x.output_error < 1 for x in report.layers)
    assert all(15 < x.sqnr_db < 25 for x in report.layers)  # ~20.5 dB measured
    assert 10 < report.fp32.ppl < 60 and report.ppl_delta > 0
    assert report.quantized.tokens == 2 * 511
