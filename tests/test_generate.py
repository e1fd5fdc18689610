"""``lowbit.generate`` and ``lowbit generate``: the greedy continuation is the one transformers' own ``generate`` gives
for the same quantized model, with the timings reported apart; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch

import helpers
import lowbit
from lowbit.errors import ConfigError


@pytest.fixture(scope="module")
def smollm2():
    from lowbit import realmodels

    if not realmodels.available("smollm2-135m"):
        pytest.skip(realmodels.MODELS["smollm2-135m"].pip)
    return realmodels.model_path("smollm2-135m")


@pytest.mark.realmodel
def test_cli_generate_is_greedy_decoding_of_the_quantized_model(smollm2, tmp_path):
    from transformers import AutoTokenizer

    prompt, n = "The capital of France is", 6
    out = tmp_path / "g.json"
    res = helpers.run_cli(["generate", smollm2, "--prompt", prompt, "--method", "int8", "--max-new-tokens", n,
                           "--threads", "1", "--json", out], timeout=600)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    got = json.loads(out.read_text())
    assert got["new_tokens"] == n and got["prompt_tokens"] > 1 and got["threads"] == 1
    assert got["decode_tok_s"] > 0 and got["first_token_s"] > 0 and got["load_s"] > 0
    assert sum(got["kernels"].values()) == 30 * 7  # every Linear of the 30 blocks is quantized (lm_head is not)
    assert got["text"] in res.stdout and "tok/s" in res.stdout

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = lowbit.from_pretrained(smollm2, quantization=lowbit.config("int8"))
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=tok.eos_token_id)
    assert got["text"] == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)


def test_generate_bad_input_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="max_new_tokens=1; expected at least 2"):
        lowbit.generate(str(tmp_path), "x", max_new_tokens=1)
    with pytest.raises(ConfigError, match="a loaded model needs tokenizer="):
        lowbit.generate(torch.nn.Linear(2, 2), "x")
