"""compressed-tensors act-order groups (``actorder: group``, a ``weight_g_idx`` per layer). No installable writer makes
them any more (llm-compressor 0.14.0.1 refuses ``actorder="group"``, compressed-tensors 0.20.0 dropped it), so the
checkpoint is GPTQModel's desc_act fixture with its numbers moved, unchanged, into compressed-tensors' layout by the
plain bit shuffling below: lowbit must decode GPTQModel's own dequantized weights from it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import lowbit

FOREIGN = Path(__file__).resolve().parents[1] / "fixtures" / "foreign"
SOURCE = "gptq-4b-g32-asym-desc-act"  # GPTQ v1, 4-bit, g32, asymmetric, desc_act (non-trivial g_idx)
ENTRY = json.loads((FOREIGN / "manifest.json").read_text())["fixtures"][SOURCE]


def nibbles(packed: torch.Tensor) -> torch.Tensor:
    """int32 words [R, C] -> their 4-bit fields, lowest first: uint8 [R, 8C]."""
    b = packed.contiguous().view(torch.uint8)
    return torch.stack([b & 15, b >> 4], -1).reshape(packed.shape[0], -1)


def words(codes: torch.Tensor) -> torch.Tensor:
    """uint8 4-bit codes [R, 8C] -> int32 words [R, C], lowest bits first."""
    pairs = codes.reshape(codes.shape[0], -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous().view(torch.int32)


def as_compressed_tensors(tmp_path: Path) -> Path:
    out = tmp_path / "ct-actorder-group"
    shutil.copytree(FOREIGN / SOURCE, out)
    (out / "quantize_config.json").unlink()
    tensors = load_file(str(out / "model.safetensors"))
    for name in ENTRY["dequantized_sha256"]:
        qweight, qzeros = tensors.pop(f"{name}.qweight"), tensors.pop(f"{name}.qzeros")
        scales, g_idx = tensors.pop(f"{name}.scales"), tensors.pop(f"{name}.g_idx")
        k, n = qweight.shape[0] * 8, qweight.shape[1]
        zeros = (nibbles(qzeros) + 1) & 15  # GPTQ v1 stores z - 1 (mod 16); compressed-tensors z (as z_signed + 8)
        tensors[f"{name}.weight_packed"] = qweight.T.contiguous()  # [N, K/8], packed along K as compressed-tensors'
        tensors[f"{name}.weight_zero_point"] = words(zeros).T.contiguous()  # packed along N: [N/8, G]
        tensors[f"{name}.weight_scale"] = scales.T.contiguous()
        tensors[f"{name}.weight_shape"] = torch.tensor([n, k])
        tensors[f"{name}.weight_g_idx"] = g_idx
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    ct = json.loads((FOREIGN / "ct-int4-asym-g32" / "config.json").read_text())["quantization_config"]
    for group in ct["config_groups"].values():
        group["weights"]["actorder"] = "group"
    cfg["quantization_config"] = ct
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_act_order_groups_decode_to_the_writers_weights(tmp_path):
    folder = as_compressed_tensors(tmp_path)
    model = lowbit.from_pretrained(folder, quantization=lowbit.config("imported", kernel="reference",
                                                                      compute_dtype="float32"))
    layers = {name: model.get_submodule(name) for name in ENTRY["dequantized_sha256"]}
    assert all(layer.fmt.g_idx for layer in layers.values())  # the act-order path, not plain groups
    assert all("pack-quantized int4 g32 asym actorder" in info.origin for info in lowbit.inspect(model).layers)
    want = load_file(str(FOREIGN / f"{SOURCE}.expected.safetensors"))
    for name, layer in layers.items():
        got = layer.fmt.decode(layer.canonical_tensors(), torch.float16)
        assert hashlib.sha256(got.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest() == \
            ENTRY["dequantized_sha256"][name], name
        if f"{name}.weight" in want:
            assert torch.equal(got, want[f"{name}.weight"]), name


def test_act_order_groups_read_in_input_order_would_be_wrong(tmp_path):
    """The same tensors without weight_g_idx (and no actorder) decode to other weights: the g_idx is really used."""
    folder = as_compressed_tensors(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.endswith("weight_g_idx")}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    for group in cfg["quantization_config"]["config_groups"].values():
        group["weights"]["actorder"] = None
    (folder / "config.json").write_text(json.dumps(cfg))
    model = lowbit.from_pretrained(folder, quantization=lowbit.config("imported", kernel="reference"))
    name = "model.layers.0.self_attn.q_proj"
    layer = model.get_submodule(name)
    got = layer.fmt.decode(layer.canonical_tensors(), torch.float16)
    assert not torch.equal(got, load_file(str(FOREIGN / f"{SOURCE}.expected.safetensors"))[f"{name}.weight"])
