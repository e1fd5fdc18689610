"""``lowbit.export(..., format="awq")``: AWQ GEMM as GPTQModel / AutoAWQ write it. The AWQ checkpoint that GPTQModel
wrote (tests/fixtures/foreign/awq-4b-g32-gemm), read by lowbit and exported again, gives its quantized tensors back
byte for byte; lowbit's own exports read back (through the reader those fixtures check) to the same weights and
logits; formats AWQ cannot hold are refused in one line naming the reason and what would map."""

from __future__ import annotations

import json
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
    return helpers.make_llama(tmp_path_factory.mktemp("src") / "fp32", seed=11)


def test_the_writers_awq_checkpoint_exports_back_byte_for_byte(tmp_path):
    fixture = FOREIGN / "awq-4b-g32-gemm"
    model = lowbit.from_pretrained(fixture, quantization=lowbit.config("imported", **RUN))
    out = lowbit.export(model, tmp_path / "awq", format="awq")
    theirs, ours = helpers.folder_tensors(fixture), helpers.folder_tensors(out)
    quantized = [k for k in theirs if k.endswith((".qweight", ".qzeros", ".scales"))]
    assert len(quantized) == 21 and set(quantized) <= set(ours)
    for key in quantized:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    want = json.loads((fixture / "config.json").read_text())["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "bits", "group_size", "version")} == \
        {"quant_method": "awq", "bits": want["bits"], "group_size": want["group_size"], "version": "gemm"}


@pytest.mark.parametrize("fields", [dict(method="int4", group_size=32), dict(method="int4", group_size=64,
                                                                            symmetric=True)])
def test_awq_export_reads_back_to_the_same_weights_and_logits(fields, source, tmp_path):
    model = helpers.quantized(source, fields, **RUN)
    out = lowbit.export(model, tmp_path / "awq", format="awq")
    again = lowbit.from_pretrained(out, quantization=lowbit.config("imported", **RUN))
    assert again.lowbit_quantizer.config.source == "awq"
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert layers
    for name, layer in layers:
        back = again.get_submodule(name)
        assert torch.equal(back.fmt.decode(back.canonical_tensors()), layer.fmt.decode(layer.canonical_tensors()))
    ids = helpers.token_ids(12)
    torch.testing.assert_close(helpers.logits(again, ids), helpers.logits(model, ids), rtol=0, atol=0)


@pytest.mark.parametrize("fields, words", [
    (dict(method="rtn", bits=8, group_size=32), ("8-bit", "4-bit", "compressed-tensors")),
    (dict(method="int4", group_size=None), ("float32 scales", "compressed-tensors")),
    (dict(method="nf4"), ("not an integer grid", "compressed-tensors")),
    (dict(method="hqq", bits=4, group_size=64), ("float zero-points",)),
])
def test_formats_awq_cannot_hold_are_refused_in_one_line(fields, words, source, tmp_path):
    helpers.assert_export_refused(source, fields, "awq", words, tmp_path / "awq")
