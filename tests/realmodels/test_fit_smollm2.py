"""``lowbit fit`` on SmolLM2-135M, kept cheap: data-free candidates, one calibration window, 1,024 eval tokens.
At 3.75 bits per weight the plan chosen from Fisher sensitivities must score better on wiki.eval.txt than the one
chosen from output errors (the reason ``fisher`` is the default), and both must fit the budget."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.data import text_path
from lowbit.eval import load_text, perplexity
from lowbit.fitting.run import fit, plan_config
from lowbit.loading.tokenizer import load_tokenizer

pytestmark = pytest.mark.realmodel
EVAL_TOKENS = 1024


@pytest.fixture(scope="module")
def smollm2():
    from lowbit import realmodels

    if not realmodels.available("smollm2-135m"):
        pytest.skip(realmodels.MODELS["smollm2-135m"].pip)
    return realmodels.model_path("smollm2-135m")


def test_fisher_plan_beats_output_error_plan(smollm2):
    tok, text = load_tokenizer(smollm2), load_text(text_path("wiki.eval.txt"))
    ppl = {}
    for estimator in ("fisher", "output"):
        res = fit(smollm2, None, "3.75bpw", "int8,int4,int3", group_size=64, estimator=estimator, samples=1,
                  seq_len=256, max_rows=256)
        assert res.plan.bpw <= 3.75 and res.plan.linear_bytes * 8 <= 3.75 * res.layout.params
        assert set(res.plan.counts()) >= {"int4", "int3"}
        model = lowbit.from_pretrained(smollm2, quantization=plan_config(res.plan, res.layout), dtype=torch.float32)
        ppl[estimator] = perplexity(model, tok, text, max_tokens=EVAL_TOKENS).ppl
    assert ppl["fisher"] < ppl["output"], ppl
