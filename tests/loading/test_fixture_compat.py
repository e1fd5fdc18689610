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
