"""``lowbit.export(..., format="bnb")``: bitsandbytes 4-bit as transformers writes it. The checkpoints that
bitsandbytes 0.50.2 wrote through transformers (tests/fixtures/foreign/bnb-*), read by lowbit and exported again,
give every tensor back byte for byte; lowbit's own nf4 exports are read back by lowbit's reader (which those
fixtures check) and by transformers' own bitsandbytes loader (bitsandbytes is in the test extra), whose
``dequantize_4bit`` gives lowbit's weights bit for bit; formats bitsandbytes cannot hold are refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.nn import QuantLinear

import helpers

FOREIGN = Path(__file__).resolve().parents[1] / "fixtures" / "foreign"
RUN = dict(kernel="reference", compute_dtype="float32")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return helpers.make_llama(tmp_path_factory.mktemp("src") / "bf16", seed=13, dtype=torch.bfloat16)


def quantized_layers(model) -> list[tuple[str, QuantLinear]]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert layers
    return layers


@pytest.mark.parametrize("name", ["bnb-nf4", "bnb-nf4-dq", "bnb-fp4"])
def test_the_writers_bnb_checkpoint_exports_back_byte_for_byte(name, tmp_path):
    fixture = FOREIGN / name
    model = lowbit.from_pretrained(fixture, quantization=lowbit.config("imported", **RUN))
    out = lowbit.export(model, tmp_path / "bnb", format="bnb")
    theirs, ours = helpers.folder_tensors(fixture), helpers.folder_tensors(out)
    assert set(ours) == set(theirs) and len(theirs) > 7 * 4  # seven Linears, four tensors or more each
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    want = json.loads((fixture / "config.json").read_text())["quantization_config"]
    keys = ("quant_method", "load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
            "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")
    assert {k: qc[k] for k in keys} == {k: want[k] for k in keys}


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_export_reads_back_to_the_same_weights_and_logits(double_quant, source, tmp_path):
    model = helpers.quantized(source, dict(method="nf4", double_quant=double_quant), **RUN)
    out = lowbit.export(model, tmp_path / "bnb", format="bnb")
    again = lowbit.from_pretrained(out, quantization=lowbit.config("imported", **RUN))
    assert again.lowbit_quantizer.config.source == "bitsandbytes"
    for name, layer in quantized_layers(model):
        back = again.get_submodule(name)
        assert torch.equal(back.fmt.decode(back.canonical_tensors()), layer.fmt.decode(layer.canonical_tensors()))
    ids = helpers.token_ids(12)
    torch.testing.assert_close(helpers.logits(again, ids), helpers.logits(model, ids), rtol=0, atol=0)


@pytest.mark.parametrize("double_quant", [False, True])
def test_transformers_bitsandbytes_loader_dequantizes_the_same_weights(double_quant, source, tmp_path):
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes (in the test extra) reads the export back")
    import transformers

    model = helpers.quantized(source, dict(method="nf4", double_quant=double_quant), **RUN)
    out = lowbit.export(model, tmp_path / "bnb", format="bnb")
    back = transformers.AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    theirs = {n: m for n, m in back.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    ours = dict(quantized_layers(model))
    assert set(theirs) == set(ours)
    for name, module in theirs.items():
        got = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        layer = ours[name]
        want = layer.fmt.decode(layer.canonical_tensors(), got.dtype)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want), name
    ids = helpers.token_ids(12)
    with torch.inference_mode():  # bitsandbytes computes in bf16, lowbit's reference kernel in fp32
        torch.testing.assert_close(back(input_ids=ids).logits.float(), helpers.logits(model, ids).float(),
                                   rtol=0.05, atol=0.05)


@pytest.mark.parametrize("fields, words", [
    (dict(method="fp4"), ("E2M1", "nf4 block_size=64")),
    (dict(method="nf4", block_size=32), ("blocks of 32", "nf4 block_size=64")),
    (dict(method="int8"), ("LLM.int8()", "compressed-tensors")),
    (dict(method="int4", group_size=32), ("no bitsandbytes form", "nf4 block_size=64")),
    (dict(method="nf4", quantize_embeddings=True), ("embedding table",)),
])
def test_formats_bitsandbytes_cannot_hold_are_refused_in_one_line(fields, words, source, tmp_path):
    helpers.assert_export_refused(source, fields, "bnb", words, tmp_path / "bnb")


def test_cli_export_bnb(source, tmp_path):
    src = tmp_path / "nf4"
    lowbit.save_pretrained(helpers.quantized(source, dict(method="nf4")), src)
    done = subprocess.run([sys.executable, "-m", "lowbit", "export", str(src), str(tmp_path / "bnb"), "--format",
                           "bnb"], capture_output=True, text=True, env=helpers.cli_env())
    assert done.returncode == 0, done.stderr
    qc = json.loads((tmp_path / "bnb" / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["bnb_4bit_quant_type"]) == ("bitsandbytes", "nf4")
