"""GGUF files through ``lowbit.from_pretrained``, against transformers' own GGUF load of the same file:
tests/fixtures/foreign/tiny-llama.gguf (written by the gguf package: make_gguf.py) holds Q4_0 and Q8_0 weights, which
map losslessly, and Q4_1 / Q5_0 / Q5_1 weights, which are dequantized and re-quantized with the requested method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import lowbit
from lowbit.errors import LowbitError

pytest.importorskip("gguf", reason="the gguf package (lowbit[demo], in the test extra) reads GGUF files")

FOREIGN = Path(__file__).resolve().parents[1] / "fixtures" / "foreign"
FILE = FOREIGN / "tiny-llama.gguf"
LOSSLESS = {"self_attn.q_proj": "int4", "self_attn.k_proj": "int8", "mlp.gate_proj": "int4", "mlp.up_proj": "int8"}
REQUANTIZED = ("self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")


def cfg():
    return lowbit.config("int4", group_size=32, kernel="reference", compute_dtype="float32")


@pytest.fixture(scope="module")
def reference():
    """transformers' own GGUF load: every tensor dequantized to float32 first."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(FOREIGN), gguf_file=FILE.name,
                                                             dtype=torch.float32).eval()


def weight(model, name: str) -> torch.Tensor:
    layer = model.get_submodule(f"model.layers.0.{name}")
    return layer.fmt.decode(layer.canonical_tensors(), torch.float32)


def test_q4_0_and_q8_0_map_losslessly(reference):
    model = lowbit.from_pretrained(FILE, quantization=cfg())
    for name, kind in LOSSLESS.items():
        layer = model.get_submodule(f"model.layers.0.{name}")
        assert layer.fmt.describe().startswith(f"{kind} g32"), layer.fmt.describe()
        assert torch.equal(weight(model, name), reference.get_submodule(f"model.layers.0.{name}").weight), name
    origins = {info.name.split("layers.0.")[-1]: info.origin for info in lowbit.inspect(model).layers}
    assert all(origins[n].endswith(": exact") for n in LOSSLESS), origins
    assert all("re-quantized" in origins[n] for n in REQUANTIZED), origins


def test_other_types_are_re_quantized_like_transformers_load_plus_the_same_method(reference):
    """Q4_1 / Q5_0 / Q5_1, dequantized by the gguf package one tensor at a time, then the lowbit method: the same
    stored weights as quantizing transformers' fully dequantized model with that method."""
    model = lowbit.from_pretrained(FILE, quantization=cfg())
    import copy

    ref = lowbit.quantize_(copy.deepcopy(reference), cfg())
    for name in REQUANTIZED:
        assert torch.equal(weight(model, name), weight(ref, name)), name
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, want = model(input_ids=ids).logits, reference(input_ids=ids).logits
    rel = ((got - want).norm() / want.norm()).item()
    print(f"tiny GGUF: lowbit int4 load vs transformers' fp32 GGUF load, relative logit error {rel:.3f}")
    assert rel < 0.3


def test_without_a_method_lossless_layers_map_and_the_rest_loads_dequantized(reference):
    model = lowbit.from_pretrained(FILE)
    assert model.lowbit_quantizer.config.method == "imported"
    assert set(model.lowbit_quantizer.mapped) == {f"model.layers.0.{n}" for n in LOSSLESS}
    for name in REQUANTIZED:
        got = model.get_submodule(f"model.layers.0.{name}").weight
        assert torch.equal(got, reference.get_submodule(f"model.layers.0.{name}").weight), name


def test_an_unhandled_gguf_tensor_type_is_named(tmp_path):
    import gguf

    out = tmp_path / "bad.gguf"
    reader = gguf.GGUFReader(str(FILE))
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(64)
    for t in reader.tensors:
        if t.name == "blk.0.attn_v.weight":  # Q8_1: a type the gguf package cannot dequantize
            raw = np.zeros((64, 2 * gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1][1]), dtype=np.uint8)
            writer.add_tensor(t.name, raw, raw_dtype=gguf.GGMLQuantizationType.Q8_1)
        else:
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(LowbitError) as info:
        lowbit.from_pretrained(out, quantization=cfg())
    assert "Q8_1" in str(info.value) and "blk.0.attn_v.weight" in str(info.value)
    assert "\n" not in str(info.value)
