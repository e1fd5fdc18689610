"""The conformance suites every method's tests subclass (ARCHITECTURE.md §4 and §6).

A data-free method's test module defines ``class TestNf4(Conformance)`` with a few class attributes and gets:
registration and config round-trips, config errors, the stored layout, reference-kernel correctness,
an SQNR floor on Gaussian weights with outliers, exact zeros for all-zero groups, quantize-on-load →
save → reload bit-identical (with ``inspect`` reporting the format's bits per weight), and a perplexity
bound on a real model (marker ``realmodel``).

A calibrated method (``requires_calibration``) subclasses :class:`CalibratedConformance` instead: the same
registry and config checks, then the method run through the public ``lowbit.quantize_calibrated`` on a tiny
Llama with fixed token ids (no tokenizer): quantizing while loading is refused, every layer stores its format's
layout, the folder reloads and re-saves bit-identically, the same ids give the same bytes again, bad runner input
fails before anything is written, and the logits stay within ``max_logit_error`` of full precision.

Class attributes:
- ``method``: registry name; ``fields``: config fields for the tests (a small, fast setting).
- ``bad_fields``: list of (fields, text the ConfigError must contain).
- ``bits_per_weight``: expected bits per weight of a [256, 1024] weight under ``fields``, scales included.
- ``sqnr_floor``: dB on the test weight; measured values are written next to each floor.
- ``activation_error``: bound on the relative difference from dequantize + F.linear (0 unless activations are
  quantized too).
- ``real_model``, ``real_fields``, ``real_max_ratio``: perplexity on the first ``REAL_TOKENS`` tokens of
  wiki.eval.txt must stay below ``real_max_ratio`` × fp32.
- calibrated only: ``max_logit_error``, the bound on the relative logits error of the tiny model.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from helpers import data_dir, logits, make_llama, snapshot, token_ids

import lowbit
from lowbit.errors import ConfigError
from lowbit.nn import QuantLinear

REAL_TOKENS = 2048


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (ref.double() - approx.double()).pow(2).sum()
    return float(10 * torch.log10(ref.double().pow(2).sum() / noise)) if noise > 0 else math.inf


def test_weight(n: int = 256, k: int = 1024, seed: int = 0) -> torch.Tensor:
    """Gaussian weights with a few large outliers, like trained linears."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    idx = torch.randint(0, n * k, (n * k // 500,), generator=g)
    w.view(-1)[idx] *= 8
    return w


test_weight.__test__ = False  # a helper, not a test


def quantized_linear(cfg: lowbit.QuantConfig, w: torch.Tensor, bias: bool = False) -> QuantLinear:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(w)
    model = torch.nn.Sequential(lin)
    lowbit.quantize_(model, cfg)
    return model[0]


@functools.lru_cache(maxsize=4)
def _real_setup(name: str) -> tuple[Path, Any, str]:
    from transformers import AutoTokenizer

    from lowbit import realmodels
    from lowbit.eval import load_text

    if not realmodels.available(name):
        pytest.skip(realmodels.MODELS[name].pip)
    path = data_dir() / "wiki.eval.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found; set LOWBIT_DATA to the folder holding wiki.eval.txt")
    folder = realmodels.model_path(name)
    return folder, AutoTokenizer.from_pretrained(folder), load_text(path)[:20_000]


@functools.lru_cache(maxsize=4)
def real_fp32_ppl(name: str) -> float:
    from transformers import AutoModelForCausalLM

    from lowbit.eval import perplexity

    folder, tok, text = _real_setup(name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return perplexity(model, tok, text, max_tokens=REAL_TOKENS).ppl


def real_ppl(name: str, cfg: lowbit.QuantConfig) -> float:
    from lowbit.eval import perplexity

    folder, tok, text = _real_setup(name)
    model = lowbit.from_pretrained(folder, quantization=cfg, dtype=torch.float32)
    return perplexity(model, tok, text, max_tokens=REAL_TOKENS).ppl


class ConfigConformance:
    """Registration and config checks shared by both suites."""

    method: ClassVar[str] = ""
    fields: ClassVar[dict[str, Any]] = {}
    bad_fields: ClassVar[list[tuple[dict[str, Any], str]]] = []

    def cfg(self, **over: Any) -> lowbit.QuantConfig:
        return lowbit.config(self.method, **{**self.fields, **over})

    # ---- registry and config -------------------------------------------------------------------------------
    def test_registered_and_round_trips(self):
        assert self.method in lowbit.methods()
        cfg = self.cfg()
        data = cfg.to_dict()
        assert data["quant_method"] == "lowbit" and data["version"] >= 1
        assert lowbit.config_from_dict(data) == cfg
        assert lowbit.config(self.method) == lowbit.config_from_dict(lowbit.config(self.method).to_dict())

    def test_bad_config(self):
        assert self.bad_fields, "list the config errors this method must raise"
        for fields, text in self.bad_fields:
            with pytest.raises(ConfigError) as err:
                self.cfg(**fields)
            assert text in str(err.value), (fields, str(err.value))
            assert "\n" not in str(err.value)

    def test_newer_version_is_refused(self):
        data = self.cfg().to_dict()
        data["version"] += 1
        with pytest.raises(ConfigError, match="newer"):
            lowbit.config_from_dict(data)


class Conformance(ConfigConformance):
    bits_per_weight: ClassVar[float] = 0.0
    sqnr_floor: ClassVar[float] = 0.0
    real_model: ClassVar[str] = "smollm2-135m"
    real_fields: ClassVar[dict[str, Any]] = {}
    real_max_ratio: ClassVar[float] = 1.5
    activation_error: ClassVar[float] = 1e-6  # relative error of formats that also quantize activations (W8A8)

    # ---- the stored format and the reference kernel ------------------------------------------------------------
    def test_layout_and_bits_per_weight(self):
        layer = quantized_linear(self.cfg(), test_weight())
        stored = layer.canonical_tensors()
        layout = layer.fmt.expected_tensors(256, 1024)
        assert sorted(stored) == sorted(layout)
        for name, (shape, dtype) in layout.items():
            assert tuple(stored[name].shape) == shape and stored[name].dtype == dtype, name
        assert layer.bits_per_weight() == pytest.approx(self.bits_per_weight, abs=1e-6)
        assert layer.fmt.bits_per_weight(256, 1024) * 256 * 1024 / 8 == pytest.approx(
            sum(t.numel() * t.element_size() for t in stored.values()))

    def test_reference_kernel_is_dequantize_then_linear(self):
        w = test_weight(64, 256)
        layer = quantized_linear(self.cfg(kernel="reference", compute_dtype="float32"), w, bias=True)
        assert layer.kernel.name == "reference"
        x = torch.randn(3, 5, 256)
        expected = layer.fmt.reference_linear(x, layer.canonical_tensors(), layer.bias)
        assert torch.equal(layer(x), expected)
        plain = torch.nn.functional.linear(x, layer.fmt.decode(layer.canonical_tensors()), layer.bias)
        rel = ((layer(x) - plain).norm() / plain.norm()).item()
        assert rel <= self.activation_error, rel  # weight-only formats: dequantize + F.linear exactly

    def test_every_kernel_matches_reference(self):
        w = test_weight(64, 256)
        ref = quantized_linear(self.cfg(kernel="reference", compute_dtype="float32"), w, bias=True)
        x = torch.randn(2, 7, 256)
        expected = ref(x)
        for compute in ("float32", "bfloat16"):
            fast = quantized_linear(self.cfg(compute_dtype=compute), w, bias=True)
            with torch.no_grad():
                fast.bias.copy_(ref.bias)
            got = fast(x)
            tol = 1e-5 if compute == "float32" else 2e-2
            assert ((got - expected).norm() / expected.norm()).item() < tol, (fast.kernel.name, compute)

    def test_sqnr_floor(self):
        w = test_weight()
        layer = quantized_linear(self.cfg(), w)
        got = sqnr_db(w, layer.fmt.decode(layer.canonical_tensors()))
        assert got >= self.sqnr_floor, f"{self.method}: SQNR {got:.2f} dB < floor {self.sqnr_floor}"

    def test_all_zero_groups_come_back_exactly_zero(self):
        w = test_weight(64, 256)
        w[:8] = 0  # whole rows
        w[8:, :128] = 0  # the first groups of every other row
        layer = quantized_linear(self.cfg(), w)
        deq = layer.fmt.decode(layer.canonical_tensors())
        assert torch.isfinite(deq).all()
        assert torch.equal(deq[:8], torch.zeros(8, 256))
        assert torch.equal(deq[8:, :64], torch.zeros(56, 64))

    def test_deterministic(self):
        w = test_weight(64, 256)
        a = quantized_linear(self.cfg(), w).canonical_tensors()
        b = quantized_linear(self.cfg(), w.clone()).canonical_tensors()
        assert all(torch.equal(a[n], b[n]) for n in a)

    # ---- the pipeline ---------------------------------------------------------------------------------------
    def test_load_save_reload_bit_identical(self, tmp_path):
        src = make_llama(tmp_path / "src")
        ids = token_ids()
        model = lowbit.from_pretrained(src, quantization=self.cfg())
        out = lowbit.save_pretrained(model, tmp_path / "q")
        again = lowbit.from_pretrained(out)
        assert again.config.quantization_config["method"] == model.config.quantization_config["method"]
        a, b = model.state_dict(), again.state_dict()
        assert sorted(a) == sorted(b)
        assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(logits(model, ids), logits(again, ids))
        lowbit.save_pretrained(again, tmp_path / "q2")  # reloaded and saved again: the same bytes
        twice = lowbit.from_pretrained(src, quantization=self.cfg())  # quantized again from the source: the same bytes
        lowbit.save_pretrained(twice, tmp_path / "q3")
        shards = [{k: v[1] for k, v in snapshot(d).items() if k.endswith(".safetensors")} for d in
                  (out, tmp_path / "q2", tmp_path / "q3")]
        assert shards[0] and shards[0] == shards[1] == shards[2]
        report = lowbit.inspect(out)
        layers = {layer.name: layer for layer in report.layers}
        q = layers["model.layers.0.self_attn.q_proj"]
        assert q.bits_per_weight == pytest.approx(again.model.layers[0].self_attn.q_proj.bits_per_weight(), abs=1e-4)

    @pytest.mark.realmodel
    def test_real_model_perplexity(self):
        cfg = lowbit.config(self.method, **(self.real_fields or self.fields))
        base = real_fp32_ppl(self.real_model)
        got = real_ppl(self.real_model, cfg)
        print(f"{self.method} {cfg.to_dict()} on {self.real_model}: ppl {got:.3f} vs fp32 {base:.3f}")
        assert got < base * self.real_max_ratio, f"ppl {got:.2f} vs fp32 {base:.2f} (bound x{self.real_max_ratio})"


# ---- calibrated methods ----------------------------------------------------------------------------------------

CALIB_IDS = torch.randint(0, 128, (4, 48), generator=torch.Generator().manual_seed(3))  # the tiny Llama's vocab


def _shards(folder: Path) -> dict[str, str]:
    return {k: v[1] for k, v in snapshot(folder).items() if k.endswith(".safetensors")}


class CalibratedConformance(ConfigConformance):
    """The suite of methods that need calibration data, run through ``lowbit.quantize_calibrated``."""

    max_logit_error: ClassVar[float] = 0.1  # relative logits error of the tiny Llama against full precision

    @pytest.fixture(scope="class")
    def run(self, tmp_path_factory):
        """(source folder, quantized folder, quantizer) of one calibration run, shared by the class's tests."""
        root = tmp_path_factory.mktemp(f"calibrated-{self.method}")
        src = make_llama(root / "src")
        out, quantizer = lowbit.quantize_calibrated(src, root / "q", self.cfg(), ids=CALIB_IDS, batch_size=2)
        return src, out, quantizer

    def test_quantize_on_load_is_refused(self, tmp_path):
        src = make_llama(tmp_path / "src")
        with pytest.raises(ConfigError, match=f"needs calibration data .*--method {self.method} --calib") as err:
            lowbit.from_pretrained(src, quantization=self.cfg())
        assert "\n" not in str(err.value)

    def test_every_layer_stores_its_formats_layout(self, run):
        _, out, quantizer = run
        model = lowbit.from_pretrained(out)
        assert model.config.quantization_config["method"] == self.method
        layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
        assert sorted(layers) == sorted(n for n in quantizer.formats if n not in quantizer.tables) and layers
        for name, layer in layers.items():
            stored = layer.canonical_tensors()
            layout = layer.fmt.expected_tensors(layer.out_features, layer.in_features)
            assert layer.fmt == quantizer.formats[name] and sorted(stored) == sorted(layout), name
            for tensor, (shape, dtype) in layout.items():
                assert tuple(stored[tensor].shape) == shape and stored[tensor].dtype == dtype, (name, tensor)
        assert (quantizer.summary() or "").startswith(f"{self.method}: ")

    def test_reload_and_resave_bit_identical(self, run, tmp_path):
        _, out, _ = run
        model = lowbit.from_pretrained(out)
        lowbit.save_pretrained(model, tmp_path / "again")
        again = lowbit.from_pretrained(tmp_path / "again")
        a, b = model.state_dict(), again.state_dict()
        assert sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
        ids = token_ids()
        assert torch.equal(logits(model, ids), logits(again, ids))
        assert _shards(out) and _shards(out) == _shards(tmp_path / "again")

    def test_same_ids_give_the_same_bytes(self, run, tmp_path):
        src, out, _ = run
        twice, _ = lowbit.quantize_calibrated(src, tmp_path / "q", self.cfg(), ids=CALIB_IDS, batch_size=2)
        assert _shards(out) == _shards(twice)

    def test_bad_runner_input_fails_before_writing(self, run, tmp_path):
        src, out, _ = run
        for kwargs, text in (({"ids": CALIB_IDS.float()}, "ids="),
                             ({"ids": CALIB_IDS, "batch_size": 0}, "batch_size=0")):
            with pytest.raises(ConfigError, match=text) as err:
                lowbit.quantize_calibrated(src, tmp_path / "bad", self.cfg(), **kwargs)
            assert "\n" not in str(err.value)
        with pytest.raises(ConfigError, match="already quantized"):
            lowbit.quantize_calibrated(out, tmp_path / "bad", self.cfg(), ids=CALIB_IDS)
        assert not any(p.suffix == ".safetensors" for p in (tmp_path / "bad").glob("*"))

    def test_logits_stay_close_to_full_precision(self, run):
        src, out, _ = run
        ids = token_ids(n=32, batch=2)
        ref = logits(lowbit.from_pretrained(src), ids)
        got = logits(lowbit.from_pretrained(out), ids)
        err = float((got - ref).norm() / ref.norm())
        assert err < self.max_logit_error, f"{self.method}: relative logits error {err:.4f} >= {self.max_logit_error}"
