"""fp8 (e4m3fn) on the conformance suite: weight-only per-channel, weight-only 128x128 blocks, W8A8 dynamic.

SQNR on conformance.test_weight (Gaussian with 0.2% outliers x8), in dB: per-channel 31.93, block 31.58 (W8A8
stores the same weights as per-channel); floors sit 0.5 dB below. e4m3fn keeps 3 mantissa bits, so its error is
relative and ~31.6 dB on any weight (SmolLM2-135M layers: fp8 31.5-31.8 dB, int8 per-channel 38.7-42.0 dB).

Real-model bounds: SmolLM2-135M, first 2048 tokens of wiki.eval.txt, load dtype float32, compute dtype auto (bf16 on
the measuring CPU), reference kernel. fp32 ppl 20.762; channel 21.307 (x1.0262), block 21.158 (x1.0190), W8A8
dynamic 21.475 (x1.0343); block + W8A8 21.313 (x1.0265). With compute_dtype=float32 the ratios are the same within
0.001 (1.0259 / 1.0193 / 1.0348), so the loss is the fp8 rounding itself; it is above the +1% hoped for at this
model size (int8 per-channel keeps ~9 dB more SQNR on these weights).
"""

from __future__ import annotations

import pytest
import torch
from conformance import Conformance, quantized_linear, test_weight
from helpers import make_llama

import lowbit
from lowbit.errors import DependencyError
from lowbit.formats import Fp8Format
from lowbit.methods.fp8 import Activations, Fp8Config, Fp8Quantizer, WeightScale

_BAD = [({"weight_scale": "row"}, "weight_scale='row'"), ({"activations": "static"}, "activations='static'"),
        ({"weight_scale": 128}, "weight_scale=128")]


class TestFp8(Conformance):
    method = "fp8"
    bad_fields = _BAD
    bits_per_weight = 8 + 32 / 1024
    sqnr_floor = 31.4  # measured 31.93
    real_max_ratio = 1.035  # measured 1.0262


class TestFp8Block(Conformance):
    method = "fp8"
    fields = {"weight_scale": "block"}
    bad_fields = _BAD
    bits_per_weight = 8 + 2 * 8 * 32 / (256 * 1024)  # [256, 1024]: 2 x 8 tiles
    sqnr_floor = 31.0  # measured 31.58
    real_max_ratio = 1.03  # measured 1.0190


class TestFp8Dynamic(Conformance):
    method = "fp8"
    fields = {"activations": "dynamic"}
    bad_fields = _BAD
    bits_per_weight = 8 + 32 / 1024
    sqnr_floor = 31.4  # measured 31.93 (the weights are stored as per-channel fp8)
    real_max_ratio = 1.045  # measured 1.0343

    activation_error = 0.04  # measured 0.027: fp8 activations (3 mantissa bits) add noise, ~31 dB like the weights


def test_config_fields_and_spec():
    cfg = lowbit.config("fp8")
    assert cfg.weight_scale is WeightScale.CHANNEL and cfg.activations is Activations.NONE
    assert cfg.to_dict() == {"quant_method": "lowbit", "method": "fp8", "version": 1, "modules_to_not_convert": [],
                             "quantize_embeddings": False, "quantize_lm_head": False, "strict": False,
                             "weight_scale": "channel", "activations": "none"}
    q = Fp8Quantizer(Fp8Config(weight_scale="block", activations="dynamic"))
    assert q.weight_format("x", torch.nn.Linear(300, 130)) == Fp8Format(tile=128, activations="dynamic")
    assert Fp8Quantizer(Fp8Config()).weight_format("x", torch.nn.Linear(8, 8)) == Fp8Format()


def test_block_layer_with_edge_tiles_runs():
    w = test_weight(130, 200)
    layer = quantized_linear(lowbit.config("fp8", weight_scale="block", compute_dtype="float32"), w)
    assert layer.canonical_tensors()["scales"].shape == (2, 2)
    x = torch.randn(4, 200)
    y = layer(x)
    assert ((y - x @ w.T).norm() / (x @ w.T).norm()).item() < 0.05


def test_w8a8_differs_from_weight_only():
    # the activation scheme reaches the reference op through the format key
    w = test_weight(64, 256)
    x = torch.randn(4, 256)
    a = quantized_linear(lowbit.config("fp8", compute_dtype="float32"), w)
    b = quantized_linear(lowbit.config("fp8", activations="dynamic", compute_dtype="float32"), w)
    ta, tb = a.canonical_tensors(), b.canonical_tensors()
    assert torch.equal(ta["scales"], tb["scales"])
    assert torch.equal(ta["qweight"].view(torch.uint8), tb["qweight"].view(torch.uint8))
    assert '"activations": "dynamic"' in b.fmt.key()
    assert not torch.equal(a(x), b(x))


def test_missing_float8_dtype_is_a_dependency_error(monkeypatch, tmp_path):
    src = make_llama(tmp_path / "src")
    quantizer = Fp8Quantizer(Fp8Config())
    quantizer.validate_environment(torch.device("cpu"), torch.float32)  # present here
    version = torch.__version__
    monkeypatch.delattr(torch, "float8_e4m3fn")
    with pytest.raises(DependencyError) as err:
        quantizer.validate_environment(torch.device("cpu"), torch.float32)
    msg = str(err.value)
    assert "float8_e4m3fn" in msg and version in msg and "pip install 'torch>=2.1'" in msg and "\n" not in msg
    with pytest.raises(DependencyError, match="float8_e4m3fn"):
        lowbit.from_pretrained(src, quantization=lowbit.config("fp8"))
    with pytest.raises(DependencyError, match="float8_e4m3fn"):
        lowbit.quantize_(torch.nn.Sequential(torch.nn.Linear(16, 16)), lowbit.config("fp8"))
