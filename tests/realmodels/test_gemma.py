"""Gemma-3-270M end to end: quantize on load, save → reload bit-identical, perplexity against plain transformers fp32,
and a small int4 folder that still generates.

Perplexity: first 4096 tokens of wiki.eval.txt, 512-token windows with BOS each (lowbit.eval.perplexity's accounting:
8 windows, 4087 scored tokens). Measured here (torch 2.13, transformers 5.24, CPU with AMX-bf16, so quantized layers
compute in bf16): fp32 20.135, int8 20.156 (+0.10%), int4 g128 33.92, int4 g128 + int8 tied embedding 34.01.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.nn import QuantEmbedding, QuantLinear
from helpers import data_dir  # noqa: E402

pytestmark = pytest.mark.realmodel

MAX_TOKENS, CTX = 4096, 512
INT8_MAX_REL = 0.005  # int8 may cost at most +0.5% perplexity (measured +0.10%)
INT4_MAX_PPL = 36.0  # int4 g128 (measured 33.92; fp32 20.14)
SMALL_FOLDER = 300e6  # int4 + int8 embedding folder (measured 255 MB; the fp32 folder is ~1.07 GB)
PROMPT = "Paris is the capital of"

VARIANTS = {"int8": lambda: lowbit.config("int8"), "int4-g128": lambda: lowbit.config("int4", group_size=128)}


@pytest.fixture(scope="session")
def gemma_dir() -> Path:
    from lowbit import realmodels

    if not realmodels.available("gemma-3-270m"):
        pytest.skip(realmodels.MODELS["gemma-3-270m"].pip)
    return realmodels.model_path("gemma-3-270m")


@pytest.fixture(scope="session")
def eval_text() -> str:
    from lowbit.eval import load_text

    path = data_dir() / "wiki.eval.txt"
    return load_text(path)[:40_000]  # ~9k tokens: more than the 4096 scored, and quick to tokenize


@pytest.fixture(scope="session")
def tokenizer(gemma_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma_dir)


@pytest.fixture(scope="session")
def fp32_ppl(gemma_dir, tokenizer, eval_text):
    """Plain transformers fp32: the baseline, computed without lowbit's loader."""
    from transformers import AutoModelForCausalLM

    from lowbit.eval import perplexity

    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()
    res = perplexity(model, tokenizer, eval_text, ctx=CTX, max_tokens=MAX_TOKENS)
    assert (res.windows, res.tokens, res.bos_per_window) == (8, 510 + 7 * 511, True)
    print(f"\nGemma fp32: {res}  ({res.ppl:.4f})")
    return res


@pytest.fixture(scope="module", params=list(VARIANTS))
def quantized(request, gemma_dir):
    model = lowbit.from_pretrained(gemma_dir, quantization=VARIANTS[request.param]())
    yield request.param, model
    del model


def _ids(tokenizer) -> torch.Tensor:
    return tokenizer(PROMPT, return_tensors="pt")["input_ids"]


def _logits(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits.clone()


def test_quantize_on_load_converts_every_decoder_linear(quantized):
    name, model = quantized
    linears = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(linears) == 18 * 7
    assert type(model.lm_head) is torch.nn.Linear and type(model.model.embed_tokens) is not QuantEmbedding
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    bits = {m.fmt.bits for m in linears.values()}
    assert bits == {8 if name == "int8" else 4}


def test_save_reload_gives_bit_identical_logits(quantized, tokenizer, tmp_path_factory):
    name, model = quantized
    out = lowbit.save_pretrained(model, tmp_path_factory.mktemp("gemma") / name)
    lowbit.verify(out)
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    again = lowbit.from_pretrained(out)
    ids = _ids(tokenizer)
    assert torch.equal(_logits(again, ids), _logits(model, ids))


def test_perplexity_against_fp32(quantized, tokenizer, eval_text, fp32_ppl):
    from lowbit.eval import perplexity

    name, model = quantized
    res = perplexity(model, tokenizer, eval_text, ctx=CTX, max_tokens=MAX_TOKENS)
    print(f"\nGemma {name}: {res}  ({res.ppl:.4f}; fp32 {fp32_ppl.ppl:.4f})")
    assert (res.windows, res.tokens) == (fp32_ppl.windows, fp32_ppl.tokens)
    if name == "int8":
        assert res.ppl <= fp32_ppl.ppl * (1 + INT8_MAX_REL), (res.ppl, fp32_ppl.ppl)
    else:
        assert fp32_ppl.ppl * (1 + INT8_MAX_REL) < res.ppl < INT4_MAX_PPL, (res.ppl, fp32_ppl.ppl)


def test_int4_with_int8_embeddings_is_small_and_generates(gemma_dir, tokenizer, tmp_path):
    cfg = lowbit.config("int4", group_size=128, quantize_embeddings=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = lowbit.from_pretrained(gemma_dir, quantization=cfg)
    assert any("tied" in str(w.message) for w in caught)  # quantizing the tied embedding quantizes the head too
    assert isinstance(model.model.embed_tokens, QuantEmbedding) and isinstance(model.lm_head, QuantLinear)
    out = lowbit.save_pretrained(model, tmp_path / "small")
    size = sum(p.stat().st_size for p in out.iterdir())
    fp32_size = sum(p.stat().st_size for p in Path(gemma_dir).iterdir())
    print(f"\nGemma int4 g128 + int8 embedding folder: {size / 1e6:.0f} MB (fp32 {fp32_size / 1e6:.0f} MB)")
    assert fp32_size > 1.0e9 and size < SMALL_FOLDER
    again = lowbit.from_pretrained(out)
    ids = _ids(tokenizer)
    assert torch.equal(_logits(again, ids), _logits(model, ids))
    with torch.inference_mode():
        gen = again.generate(ids, max_new_tokens=8, do_sample=False)
    new = gen[0, ids.shape[1]:]
    assert new.shape == (8,)
    text = tokenizer.decode(new)
    print(f"Gemma int4 small: {PROMPT!r} -> {text!r}")
    assert text.split()[0].strip(",.") == "France", text  # fp32 and every variant measured here say France
