"""lowbit.eval.perplexity: window/BOS accounting on a fake model, and a short real run on Gemma-3-270M."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lowbit.errors import CheckpointError, ConfigError
from lowbit.eval import PerplexityResult, load_text, perplexity
from lowbit.eval.perplexity import adds_bos
from helpers import data_dir  # noqa: E402

VOCAB = 40
BOS = 1


class CharTokenizer:
    """'a'..'z' -> 10..35; BOS = 1 in front when add_bos (like Gemma's tokenizer) and add_special_tokens."""

    def __init__(self, add_bos: bool):
        self.add_bos = add_bos
        self.bos_token_id = BOS

    def __call__(self, text: str, add_special_tokens: bool = True):
        ids = [10 + (ord(c) - ord("a")) % 26 for c in text]
        return {"input_ids": ([BOS] if self.add_bos and add_special_tokens else []) + ids}


class FakeLM(torch.nn.Module):
    """Uniform logits, or (oracle=True) a confident guess of the next letter of 'abc...z' cycled; records inputs.

    The oracle guesses wrong, with the same confidence, at BOS: the token predicted from BOS alone is not scored.
    """

    def __init__(self, oracle: bool = False):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.oracle = oracle
        self.seen: list[list[int]] = []

    def forward(self, input_ids):
        assert input_ids.shape[0] == 1 and input_ids.dtype == torch.long
        self.seen.append(input_ids[0].tolist())
        logits = torch.zeros(1, input_ids.shape[1], VOCAB)
        if self.oracle:
            nxt = torch.where(input_ids[0] == BOS, 0, 10 + (input_ids[0] - 10 + 1) % 26)
            logits[0, torch.arange(input_ids.shape[1]), nxt] = 60.0
        return SimpleNamespace(logits=logits)


def letters(n: int) -> str:
    return "".join(chr(ord("a") + i % 26) for i in range(n))


@pytest.mark.parametrize(
    "add_bos, max_tokens, lengths, tokens",
    [
        # stream = BOS + 20 text ids, chunks of 8 ids: BOS+7 | BOS+8 | BOS+5 text; first text token of each unscored
        (True, None, [8, 9, 6], 6 + 7 + 4),
        (False, None, [8, 8, 4], 7 + 7 + 3),
        (True, 16, [8, 9], 6 + 7),  # max_tokens counts the leading BOS: 15 text tokens
        (False, 16, [8, 8], 7 + 7),
        (True, 9, [8], 6),  # a tail of one text token cannot score anything and is no window
    ],
)
def test_uniform_model_gives_vocab_size(add_bos, max_tokens, lengths, tokens):
    model = FakeLM()
    res = perplexity(model, CharTokenizer(add_bos), letters(20), ctx=8, max_tokens=max_tokens)
    assert isinstance(res, PerplexityResult)
    assert res.ppl == pytest.approx(VOCAB, rel=1e-6) and res.nll == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert (res.tokens, res.windows, res.bos_per_window, res.ctx) == (tokens, len(lengths), add_bos, 8)
    assert [len(w) for w in model.seen] == lengths
    assert all((w[0] == BOS) == add_bos for w in model.seen)
    assert [t for w in model.seen for t in w if t != BOS] == CharTokenizer(False)(letters(20))["input_ids"][
        : sum(lengths) - add_bos * len(lengths)]  # consecutive, non-overlapping


@pytest.mark.parametrize("add_bos, tokens", [(True, 510 + 15 * 511), (False, 16 * 511)])
def test_reference_accounting(add_bos, tokens):
    """max_tokens=8192, ctx=512 (the REALMODELS.md reference setting): 16 windows."""
    res = perplexity(FakeLM(), CharTokenizer(add_bos), letters(9000), ctx=512, max_tokens=8192)
    assert (res.windows, res.tokens) == (16, tokens)


@pytest.mark.parametrize("add_bos", [True, False])
def test_alignment_oracle_is_near_one(add_bos):
    res = perplexity(FakeLM(oracle=True), CharTokenizer(add_bos), letters(50), ctx=16)
    assert res.ppl == pytest.approx(1.0, abs=1e-9)


def test_adds_bos_detection():
    assert adds_bos(CharTokenizer(True)) and not adds_bos(CharTokenizer(False))
    no_bos = CharTokenizer(True)
    no_bos.bos_token_id = None
    assert not adds_bos(no_bos)


def test_progress_and_training_mode_restored(capsys):
    model = FakeLM().train()
    res = perplexity(model, CharTokenizer(True), letters(30), ctx=8, progress=True)
    assert res.windows == 4 and model.training


def test_bad_arguments(tmp_path):
    tok, model = CharTokenizer(True), FakeLM()
    with pytest.raises(ConfigError, match="ctx=1"):
        perplexity(model, tok, letters(20), ctx=1)
    with pytest.raises(ConfigError, match="max_tokens=0"):
        perplexity(model, tok, letters(20), max_tokens=0)
    with pytest.raises(ConfigError, match="too few"):
        perplexity(model, tok, "a")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_text(tmp_path / "nope.txt")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe abc")
    with pytest.raises(CheckpointError, match="UTF-8"):
        load_text(tmp_path / "bad.txt")


@pytest.mark.realmodel
def test_gemma_first_1024_tokens():
    from lowbit import realmodels

    eval_file = data_dir() / "wiki.eval.txt"
    if not realmodels.available("gemma-3-270m"):
        pytest.skip(realmodels.MODELS["gemma-3-270m"].pip)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = realmodels.model_path("gemma-3-270m")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    res = perplexity(model, tok, load_text(eval_file), ctx=512, max_tokens=1024)
    assert (res.windows, res.tokens, res.bos_per_window) == (2, 510 + 511, True)
    assert math.isfinite(res.ppl) and 10 < res.ppl < 60, res  # 25.7 on the first 8192 tokens
