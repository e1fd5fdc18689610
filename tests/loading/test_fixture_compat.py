"""Files saved by lowbit 0.1.0 keep loading, with the same outputs: tests/fixtures/tiny-llama-int4-g32 was written
once by tests/fixtures/make_fixture.py and committed, with the logits that version computed. If this test fails,
the current code reads old files differently: fix the loader (or add a versioned converter), do not regenerate the
fixture."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import lowbit
from lowbit.errors import MissingTokenizerWarning
from lowbit.nn import QuantEmbedding, QuantLinear

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FOLDER = FIXTURES / "tiny-llama-int4-g32"
EXPECTED = FIXTURES / "tiny-llama-int4-g32.expected.safetensors"


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    with safe_open(str(EXPECTED), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_fixture_is_what_it_claims():
    files = {p.name for p in FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "model.safetensors.index.json"} <= files
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 100_000
    qc = json.loads((FOLDER / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["method"], qc["version"]) == ("lowbit", "rtn", 1)
    assert (qc["bits"], qc["group_size"], qc["symmetric"], qc["quantize_embeddings"]) == (4, 32, False, True)
    lowbit.verify(FOLDER)  # hashes recorded by the old version still match


def test_old_folder_loads_with_the_same_logits(expected):
    # the stored format fields, plus how to run it: the oracle kernel in float32, as when the logits were made
    cfg = lowbit.config("int4", group_size=32, quantize_embeddings=True, kernel="reference", compute_dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an old, well-formed folder loads without complaint
        warnings.filterwarnings("ignore", category=MissingTokenizerWarning)  # (it has no tokenizer)
        model = lowbit.from_pretrained(FOLDER, quantization=cfg)
    assert isinstance(model.model.embed_tokens, QuantEmbedding)
    assert len([m for m in model.modules() if isinstance(m, QuantLinear)]) == 14
    got = _logits(model, expected["input_ids"])
    assert got.shape == expected["logits"].shape == (2, 10, 64)
    torch.testing.assert_close(got, expected["logits"], atol=1e-5, rtol=0)


def test_old_folder_loads_without_a_config_on_the_default_kernels(expected):
    """Plain ``from_pretrained(folder)``: the CPU kernels (bf16 on CPUs with bf16 units) agree with the stored
    float32 reference logits to bf16 precision."""
    model = lowbit.from_pretrained(FOLDER)
    got = _logits(model, expected["input_ids"]).float()
    want = expected["logits"]
    rel = ((got - want).norm() / want.norm()).item()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    print(f"default kernels vs stored reference logits: relative error {rel:.2e}, argmax agreement {agree:.2f}")
    assert rel < 2e-2 and agree >= 0.9


# ---- every format: nf4 (double quant), hqq, fp8, gptq (act-order); written by make_format_fixtures.py ----------------

FORMATS = json.loads((FIXTURES / "formats.json").read_text())["fixtures"]
ALL = ["tiny-llama-int4-g32", *FORMATS]


def _loading_config(name: str):
    if name == "tiny-llama-int4-g32":
        return lowbit.config("int4", group_size=32, quantize_embeddings=True, kernel="reference", compute_dtype="float32")
    entry = FORMATS[name]
    return lowbit.config(entry["method"], **entry["fields"], kernel="reference", compute_dtype="float32")


def _expected(name: str) -> dict[str, torch.Tensor]:
    with safe_open(str(FIXTURES / f"{name}.expected.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("name", list(FORMATS))
def test_old_format_folder_loads_with_the_same_logits(name):
    lowbit.verify(FIXTURES / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=MissingTokenizerWarning)
        model = lowbit.from_pretrained(FIXTURES / name, quantization=_loading_config(name))
    want = _expected(name)
    got = _logits(model, want["input_ids"])
    print(f"{name}: largest logit difference {float((got - want['logits']).abs().max()):.2e}")
    torch.testing.assert_close(got, want["logits"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_old_folder_saves_again_byte_for_byte(name, tmp_path):
    """Loaded and saved again, an old folder gives the same shards, the same index (hashes included) and the same
    quantization_config: what lowbit writes has not changed."""
    model = lowbit.from_pretrained(FIXTURES / name, quantization=_loading_config(name))
    lowbit.save_pretrained(model, tmp_path / "again")
    old, new = FIXTURES / name, tmp_path / "again"
    for shard in sorted(p.name for p in old.glob("*.safetensors")):
        assert (new / shard).read_bytes() == (old / shard).read_bytes(), shard
    old_index, new_index = (json.loads((d / "model.safetensors.index.json").read_text()) for d in (old, new))
    assert new_index["weight_map"] == old_index["weight_map"]
    assert new_index["metadata"]["sha256"] == old_index["metadata"]["sha256"]
    old_qc, new_qc = (json.loads((d / "config.json").read_text())["quantization_config"] for d in (old, new))
    assert new_qc == old_qc
