"""Checkpoints written by the real tools (tests/fixtures/foreign, made by make.py in its own environment) load
through ``lowbit.from_pretrained`` without those tools: the repacked layers decode to exactly the writer's own
dequantized weights (sha256 of every quantized Linear, and the sampled tensors element by element), and the model's
logits agree with the writer's model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import lowbit
from lowbit.nn import QuantLinear

FOREIGN = Path(__file__).resolve().parents[1] / "fixtures" / "foreign"
MANIFEST = json.loads((FOREIGN / "manifest.json").read_text())
FIXTURES = sorted(MANIFEST["fixtures"])
RUN = dict(kernel="reference", compute_dtype="float32")
SOURCES = {"ct": "compressed-tensors", "llmc": "compressed-tensors", "bnb": "bitsandbytes"}  # writer -> origin


def expected(name: str) -> dict[str, torch.Tensor]:
    with safe_open(str(FOREIGN / f"{name}.expected.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def load(name: str, **kwargs):
    return lowbit.from_pretrained(FOREIGN / name, quantization=lowbit.config("imported", **RUN), **kwargs)


def sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def dequantized(layer: QuantLinear, dtype: torch.dtype) -> torch.Tensor:
    return layer.fmt.decode(layer.canonical_tensors(), dtype)


def test_every_writer_is_covered():
    writers = {entry["writer"] for entry in MANIFEST["fixtures"].values()}
    assert {"ct", "llmc", "bnb", "gptqmodel"} <= writers, writers
    for name in FIXTURES:
        size = sum(p.stat().st_size for p in (FOREIGN / name).iterdir())
        assert size < 100_000, (name, size)


@pytest.mark.parametrize("name", FIXTURES)
def test_dequantized_weights_equal_the_writers(name):
    entry = MANIFEST["fixtures"][name]
    dtype = getattr(torch, entry["dequantized_dtype"])
    model = load(name)
    quantizer = model.lowbit_quantizer
    want = expected(name)
    inexact = set(quantizer.config.notes())
    assert set(entry["dequantized_sha256"]) == set(quantizer.mapped)
    for module, digest in entry["dequantized_sha256"].items():
        got = dequantized(model.get_submodule(module), dtype)
        if f"{module}.weight" in want:
            ref = want[f"{module}.weight"]
            if module in inexact:  # bitsandbytes int8: one rounding apart at most
                torch.testing.assert_close(got, ref, rtol=2 ** -7, atol=0)
            else:
                diff = (got.float() - ref.float()).abs()
                assert torch.equal(got, ref), f"{module}: {int((diff > 0).sum())} weights differ, max {float(diff.max())}"
        if module not in inexact:
            assert sha256(got) == digest, module


@pytest.mark.parametrize("name", FIXTURES)
def test_logits_agree_with_the_writers_model(name):
    want = expected(name)
    model = load(name, dtype=torch.float32)
    with torch.inference_mode():
        got = model(input_ids=want["input_ids"]).logits.float()
    ref = want["logits"]
    rel = ((got - ref).norm() / ref.norm()).item()
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"{name}: relative logit error {rel:.2e}, argmax agreement {agree:.2f}")
    assert rel < 2e-2 and agree >= 0.9


@pytest.mark.parametrize("name", FIXTURES)
def test_inspect_says_where_each_layer_came_from(name):
    model = load(name)
    entry = MANIFEST["fixtures"][name]
    source = SOURCES.get(entry["writer"], name.split("-")[0])
    for info in lowbit.inspect(model).layers:
        assert info.method == "imported"
        assert info.origin.startswith(source), info.origin
        assert info.origin.endswith("exact") or "inexact" in info.origin


def test_gptq_v2_zero_points_are_read_as_stored(tmp_path):
    """GPTQModel's gptq_v2 file stores z (v1 stores z - 1): read as v2 it is the writer's weights (above); the same
    file relabelled v1 shifts every weight by one step of its group's scale, so the version really is honoured."""
    name, module = "gptq-v2-4b-g32-asym", "model.layers.0.self_attn.q_proj"
    assert lowbit.inspect(load(name)).layers[0].origin.startswith("gptq (GPTQ v2 4-bit g32 asym)")
    folder = tmp_path / name
    shutil.copytree(FOREIGN / name, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"].update(checkpoint_format="gptq", format="gptq")
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "quantize_config.json").unlink()
    layer = lowbit.from_pretrained(folder, quantization=lowbit.config("imported", **RUN)).get_submodule(module)
    ref = expected(name)[f"{module}.weight"]
    scales = layer.canonical_tensors()["scales"].repeat_interleave(32, dim=1)
    torch.testing.assert_close(dequantized(layer, torch.float32), ref.float() - scales.float(), rtol=2 ** -8, atol=0)


def test_llm_compressor_weight_actorder_is_stored_as_plain_groups():
    """llm-compressor 0.14's GPTQ with actorder "weight" orders columns during calibration only: no weight_g_idx,
    so the layers map onto plain g32 groups (exact, per the tests above) and not onto act-order layers."""
    name = "llmc-gptq-w4a16-g32-actorder-weight"
    qc = json.loads((FOREIGN / name / "config.json").read_text())["quantization_config"]
    assert qc["config_groups"]["group_0"]["weights"]["actorder"] == "weight"
    with safe_open(str(FOREIGN / name / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.endswith("g_idx")]
    model = load(name)
    assert not any(m.fmt.g_idx for m in model.modules() if isinstance(m, QuantLinear))
    rtn = load("llmc-rtn-w4a16-g32")  # the GPTQ fixture is not the RTN one under another name
    module = "model.layers.0.mlp.down_proj"
    assert not torch.equal(dequantized(model.get_submodule(module), torch.bfloat16),
                           dequantized(rtn.get_submodule(module), torch.bfloat16))


def test_an_imported_model_saves_as_a_lowbit_folder_and_reloads(tmp_path):
    name = "bnb-nf4-dq"
    model = load(name)
    ids = expected(name)["input_ids"]
    lowbit.save_pretrained(model, tmp_path / "again")
    qc = json.loads((tmp_path / "again" / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["method"], qc["source"]) == ("lowbit", "imported", "bitsandbytes")
    again = lowbit.from_pretrained(tmp_path / "again", quantization=lowbit.config("imported", **RUN))
    with torch.inference_mode():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["gptq-4b-g32-sym", "awq-4b-g32-gemm", "bnb-nf4", "ct-int4-asym-g32",
                                  "ct-int8-sym-channel"])
def test_lowbit_kernels_run_imported_layers(name):
    """Repacked once into lowbit formats, foreign layers run on lowbit's own kernels (the default choice), with the
    reference kernel's logits to bf16 precision."""
    want = expected(name)
    ref, fast = load(name, dtype=torch.float32), lowbit.from_pretrained(FOREIGN / name, dtype=torch.float32)
    kernels = {m.kernel.name for m in fast.modules() if isinstance(m, QuantLinear)}
    with torch.inference_mode():
        got, base = (m(input_ids=want["input_ids"]).logits.float() for m in (fast, ref))
    rel = ((got - base).norm() / base.norm()).item()
    print(f"{name}: kernels {sorted(kernels)}, relative logit difference to the reference kernel {rel:.1e}")
    assert rel < 2e-2
    if "4b" in name or "int4" in name:  # int4 g32: torch's packed int4 CPU kernel (or a faster one) takes them
        assert kernels != {"reference"}, kernels
