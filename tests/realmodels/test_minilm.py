"""MiniLM (all-MiniLM-L6-v2, BertModel) sentence embeddings: lowbit int8 and int4 g32 against plain transformers fp32.

Embeddings are the sentence-transformers recipe: mean of the last hidden states over real tokens, L2-normalized.
The quality floors below sit a little under what was measured on 64 sentences of wiki.eval.txt (see FLOORS).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.nn import QuantLinear
from helpers import data_dir  # noqa: E402

pytestmark = pytest.mark.realmodel

N_SENTENCES = 64
# cosine(fp32, quantized) over the 64 sentences, measured here (torch 2.13, transformers 5.24, AMX CPU):
#   int8 per-channel: mean 0.99958, min 0.99939;  int4 g32: mean 0.97660, min 0.96854
FLOORS = {"int8": (0.9993, 0.9985), "int4-g32": (0.970, 0.95)}
CONFIGS = {"int8": lambda: lowbit.config("int8"), "int4-g32": lambda: lowbit.config("int4", group_size=32)}


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    from lowbit import realmodels

    if not realmodels.available("minilm"):
        pytest.skip(realmodels.MODELS["minilm"].pip)
    return realmodels.model_path("minilm")


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    path = data_dir() / "wiki.eval.txt"
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("="):  # article titles and section headings
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", line.strip()):
            if 6 <= len(sentence.split()) <= 40:
                out.append(sentence)
        if len(out) >= N_SENTENCES:
            break
    assert len(out) >= N_SENTENCES
    return out[:N_SENTENCES]


@pytest.fixture(scope="module")
def batch(minilm_dir, sentences):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    return tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")


def embed(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch.get("token_type_ids")).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


@pytest.fixture(scope="module")
def fp32_embeddings(minilm_dir, batch) -> torch.Tensor:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
    return embed(model, batch)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_quantized_embeddings_stay_close_to_fp32(minilm_dir, batch, fp32_embeddings, name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every MiniLM layer divides 32: no fallback, no warning
        model = lowbit.from_pretrained(minilm_dir, quantization=CONFIGS[name]())
    assert type(model).__name__ == "BertModel"
    assert len([m for m in model.modules() if isinstance(m, QuantLinear)]) == 6 * 6 + 1  # + pooler
    emb = embed(model, batch)
    cos = (emb * fp32_embeddings).sum(-1)
    mean_floor, min_floor = FLOORS[name]
    print(f"MiniLM {name}: cosine to fp32 mean {cos.mean():.5f} min {cos.min():.5f}")
    assert cos.mean() >= mean_floor and cos.min() >= min_floor, (cos.mean().item(), cos.min().item())
    assert cos.mean() < 1.0  # weights really were quantized
    # which other sentence is most similar stays the same for most sentences (measured: int8 63/64, int4 g32 53/64)
    sims_q = emb @ emb.T
    sims_f = fp32_embeddings @ fp32_embeddings.T
    sims_q.fill_diagonal_(-2)
    sims_f.fill_diagonal_(-2)
    agree = (sims_q.argmax(-1) == sims_f.argmax(-1)).float().mean().item()
    print(f"MiniLM {name}: nearest neighbour agrees with fp32 for {agree:.3f} of the sentences")
    assert agree >= (0.95 if name == "int8" else 0.75), agree
