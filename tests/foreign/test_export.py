"""``lowbit.export(..., format="compressed-tensors")``: read back by compressed-tensors' own decompressor (in the
test extra), each layer decodes to exactly the weights lowbit's format decodes; and read back by lowbit's reader.
Formats without an exact compressed-tensors form are refused with the reason and the nearest format that maps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lowbit
from lowbit.errors import LowbitError
from lowbit.nn import QuantLinear

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: E402

EXACT = {
    "int4-g32-asym": dict(method="int4", group_size=32),
    "int4-g32-sym": dict(method="int4", group_size=32, symmetric=True),
    "int3-g32-asym": dict(method="int3", group_size=32),
    "int2-g32-asym": dict(method="int2", group_size=32),
    "int8-channel-sym": dict(method="int8"),
    "int8-g64-asym": dict(method="rtn", bits=8, group_size=64),
    "fp8-channel": dict(method="fp8"),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return helpers.make_llama(tmp_path_factory.mktemp("src") / "fp32", seed=7)


def quantized(source: Path, fields: dict):
    fields = dict(fields)
    return lowbit.from_pretrained(source, quantization=lowbit.config(fields.pop("method"), **fields))


@pytest.mark.parametrize("name", list(EXACT))
def test_compressed_tensors_decompressor_reads_the_same_weights(name, source, tmp_path):
    ct = pytest.importorskip("compressed_tensors", reason="compressed-tensors (in the test extra) reads exports back")
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme

    model = quantized(source, EXACT[name])
    out = lowbit.export(model, tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and ct.__version__.startswith("0.")
    saved = {}
    for f in out.glob("*.safetensors"):
        saved.update(load_file(str(f)))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    for group in qc["config_groups"].values():
        scheme = QuantizationScheme.model_validate({k: v for k, v in group.items() if k != "format"})
        codec = BaseCompressor.get_value_from_registry(group["format"])
        for target in group["targets"]:
            module = target[len("re:^"):-1].replace("\\", "")
            local = {k[len(module) + 1:]: v for k, v in saved.items() if k.startswith(module + ".")}
            got = codec.decompress(local, scheme)["weight"]
            layer = layers.pop(module)
            want = layer.fmt.decode(layer.canonical_tensors(), got.dtype)
            assert torch.equal(got, want), (name, module, float((got.float() - want.float()).abs().max()))
    assert not layers, f"layers not in any config group: {sorted(layers)}"


@pytest.mark.parametrize("name", ["int4-g32-asym", "int4-g32-sym", "fp8-channel"])
def test_lowbit_reads_its_export_back_to_the_same_logits(name, source, tmp_path):
    model = quantized(source, {**EXACT[name], "kernel": "reference", "compute_dtype": "float32"})
    out = lowbit.export(model, tmp_path / "ct")
    again = lowbit.from_pretrained(out, quantization=lowbit.config("imported", kernel="reference",
                                                                   compute_dtype="float32"))
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("fields, words", [
    (dict(method="nf4"), ("code book", "int4")),
    (dict(method="hqq", bits=4, group_size=64), ("float zero-points", "rtn")),
    (dict(method="int4", group_size=32, quantize_embeddings=True), ("embedding table",)),
])
def test_formats_without_an_exact_form_are_refused(fields, words, source, tmp_path):
    model = quantized(source, fields)
    with pytest.raises(LowbitError) as info:
        lowbit.export(model, tmp_path / "ct")
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert not (tmp_path / "ct").exists()


def test_an_unknown_target_is_refused_naming_the_known_ones(source, tmp_path):
    model = quantized(source, dict(method="int4", group_size=32))
    with pytest.raises(LowbitError, match="unknown.*compressed-tensors.*bnb"):
        lowbit.export(model, tmp_path / "exl2", format="exl2")


@pytest.mark.parametrize("fields", [dict(method="int4", group_size=32, symmetric=True),
                                    dict(method="int3", group_size=32, symmetric=True),
                                    dict(method="rtn", bits=8, group_size=64, symmetric=True)])
def test_gptq_export_of_a_symmetric_model_reads_back_exactly(fields, source, tmp_path):
    """Read back by lowbit's GPTQ reader, which the real GPTQModel fixtures check bit for bit."""
    model = quantized(source, {**fields, "kernel": "reference", "compute_dtype": "float32"})
    out = lowbit.export(model, tmp_path / "gptq", format="gptq")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["sym"], qc["checkpoint_format"]) == ("gptq", True, "gptq")
    again = lowbit.from_pretrained(out, quantization=lowbit.config("imported", kernel="reference",
                                                                   compute_dtype="float32"))
    for name, layer in model.named_modules():
        if isinstance(layer, QuantLinear):
            back = again.get_submodule(name)
            assert torch.equal(back.fmt.decode(back.canonical_tensors()), layer.fmt.decode(layer.canonical_tensors()))


def test_asymmetric_gptq_export_is_refused_offering_compressed_tensors(source, tmp_path):
    model = quantized(source, dict(method="int4", group_size=32))
    with pytest.raises(LowbitError) as info:
        lowbit.export(model, tmp_path / "gptq", format="gptq")
    assert "asymmetric" in str(info.value) and "vLLM" in str(info.value) and "compressed-tensors" in str(info.value)


def test_cli_export(source, tmp_path):
    src = tmp_path / "int4"
    lowbit.save_pretrained(quantized(source, dict(method="int4", group_size=32)), src)
    done = subprocess.run([sys.executable, "-m", "lowbit", "export", str(src), str(tmp_path / "ct")],
                          capture_output=True, text=True, env=helpers.cli_env())
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["format"] == \
        "pack-quantized"
