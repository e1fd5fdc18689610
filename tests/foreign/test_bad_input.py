"""Foreign checkpoints that lowbit must refuse: each a one-line lowbit error naming the value, never wrong weights.
Made by editing copies of the real writers' fixtures (tests/fixtures/foreign)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lowbit
from lowbit.errors import LowbitError

FOREIGN = Path(__file__).resolve().parents[1] / "fixtures" / "foreign"
FIXTURES = json.loads((FOREIGN / "manifest.json").read_text())["fixtures"]


def copy(tmp_path: Path, name: str, **changes) -> Path:
    """A copy of fixture ``name`` whose quantization_config has ``changes`` (None removes a field)."""
    if name not in FIXTURES:
        pytest.skip(f"fixture {name} was not written (its writer did not run): see tests/fixtures/foreign/make.py")
    out = tmp_path / name
    shutil.copytree(FOREIGN / name, out)
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    for key, value in changes.items():
        if value is None:
            qc.pop(key, None)
        else:
            qc[key] = value
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def refused(folder: Path, *words: str) -> str:
    with pytest.raises(LowbitError) as info:
        lowbit.from_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def test_gptq_bits_that_disagree_with_the_tensor_shapes(tmp_path):
    refused(copy(tmp_path, "gptq-4b-g32-sym", bits=8), "bits=8", "int32 words")


def test_gptq_planar_layout_is_refused(tmp_path):
    refused(copy(tmp_path, "gptq-4b-g32-sym", checkpoint_format="gptq_p"), "gptq_p")


def test_awq_gemv_layout_is_refused(tmp_path):
    refused(copy(tmp_path, "awq-4b-g32-gemm", version="gemv", format="gemv"), "gemv")


def test_awq_tensors_in_a_gemv_shape_are_refused(tmp_path):
    folder = copy(tmp_path, "awq-4b-g32-gemm")
    tensors = load_file(str(folder / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("down_proj.qweight"))  # GEMM [K=128, N/8=8]
    tensors[key] = tensors[key].reshape(64, 16).contiguous()  # GEMV's [N, K/8]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    refused(folder, "GEMM layout")


def test_compressed_tensors_scheme_we_lack_is_named(tmp_path):
    folder = copy(tmp_path, "ct-fp8-channel", format="nvfp4-pack-quantized")
    cfg = json.loads((folder / "config.json").read_text())
    for group in cfg["quantization_config"]["config_groups"].values():
        group["format"] = "nvfp4-pack-quantized"
    (folder / "config.json").write_text(json.dumps(cfg))
    refused(folder, "nvfp4-pack-quantized")


def test_compressed_tensors_int_scheme_of_unsupported_width_is_named(tmp_path):
    folder = copy(tmp_path, "ct-int4-asym-g32")
    cfg = json.loads((folder / "config.json").read_text())
    for group in cfg["quantization_config"]["config_groups"].values():
        group["weights"]["num_bits"] = 6
    (folder / "config.json").write_text(json.dumps(cfg))
    refused(folder, "6-bit")


def test_compressed_tensors_group_actorder_without_g_idx_is_refused(tmp_path):
    """llm-compressor's actorder "weight" stores plain groups; the same tensors labelled actorder "group" would need
    each input's group (weight_g_idx), so they are refused rather than read as contiguous groups."""
    folder = copy(tmp_path, "llmc-gptq-w4a16-g32-actorder-weight")
    cfg = json.loads((folder / "config.json").read_text())
    for group in cfg["quantization_config"]["config_groups"].values():
        group["weights"]["actorder"] = "group"
    (folder / "config.json").write_text(json.dumps(cfg))
    refused(folder, "actorder='group'", "weight_g_idx")


def test_config_says_gptq_but_tensors_are_bitsandbytes(tmp_path):
    folder = copy(tmp_path, "bnb-nf4", quant_method="gptq", bits=4, group_size=32, load_in_4bit=None)
    refused(folder, "gptq", ".qweight")


def test_config_says_compressed_tensors_but_tensors_are_gptq(tmp_path):
    ct = json.loads((FOREIGN / "ct-int4-sym-g32" / "config.json").read_text())["quantization_config"]
    folder = copy(tmp_path, "gptq-4b-g32-sym", **{k: None for k in ("bits", "group_size", "desc_act", "sym",
                                                                     "checkpoint_format", "format", "meta")})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = ct
    (folder / "config.json").write_text(json.dumps(cfg))
    refused(folder, "compressed-tensors")


def test_bitsandbytes_code_book_that_is_not_bnbs(tmp_path):
    folder = copy(tmp_path, "bnb-fp4")
    tensors = load_file(str(folder / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("q_proj.weight.quant_map"))
    tensors[key] = torch.linspace(-1, 1, 16)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    refused(folder, "quant_map", "code book")


def test_unknown_quant_method_is_named(tmp_path):
    refused(copy(tmp_path, "bnb-nf4", quant_method="hqq_foreign"), "hqq_foreign")


def test_bitsandbytes_nan_weight_scale_is_an_error(tmp_path):
    folder = copy(tmp_path, "bnb-int8")
    tensors = load_file(str(folder / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("q_proj.SCB"))
    tensors[key][3] = float("nan")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    refused(folder, key, "NaN")


def test_a_method_requested_over_a_foreign_checkpoint_names_its_source():
    with pytest.raises(LowbitError) as info:
        lowbit.from_pretrained(FOREIGN / "bnb-nf4", quantization="int4")
    assert "already quantized (bitsandbytes" in str(info.value) and "'rtn'" in str(info.value)
