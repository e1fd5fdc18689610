"""The C decode step on the CPU (``lowbit.decode_cpu``): for each architecture it computes, its logits at every
position are transformers' own (token by token with a cache, same quantized layers), and ``compile_for_decode`` /
``lowbit.generate`` give transformers' greedy tokens with it. Speed: benchmarks/cpu_decode.py."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit import decode_cpu, stepping
from lowbit.decode_cpu import CpuStep, Unsupported, why_not
from lowbit.errors import LowbitError
from lowbit.kernels.cpu import native

from helpers import _seeded_init, make_gemma3

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no C kernels here: {native.unavailable()}")
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=128, max_position_embeddings=256)


def tiny(kind: str, seed: int = 0) -> torch.nn.Module:
    import transformers as tf

    configs = {"llama": lambda: tf.LlamaConfig(**SMALL, tie_word_embeddings=True),
               "qwen2": lambda: tf.Qwen2Config(**SMALL),  # q/k/v with bias
               "qwen3": lambda: tf.Qwen3Config(**SMALL, head_dim=16)}  # q/k norms
    cfg = configs[kind]()
    model = tf.AutoModelForCausalLM.from_config(cfg)
    _seeded_init(model, seed)
    return model.float().eval()


def gemma(tmp_path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(make_gemma3(tmp_path / "g"), dtype=torch.float32).eval()


def stepwise(model, ids: torch.Tensor) -> torch.Tensor:
    """transformers' logits at each position, one token per forward with a cache (as decoding runs)."""
    from transformers import DynamicCache

    cache, out = DynamicCache(config=model.config), []
    with torch.inference_mode():
        for tok in ids[0]:
            out.append(model(tok.view(1, 1), past_key_values=cache, use_cache=True).logits[0, -1].float())
    return torch.stack(out)


def c_logits(step: CpuStep, ids: torch.Tensor) -> torch.Tensor:
    out = []
    for pos, tok in enumerate(ids[0].tolist()):
        step.step(tok, pos)
        out.append(step.logits.clone())
    return torch.stack(out)


FP32 = dict(compute_dtype="float32")  # "auto" is bf16 on CPUs with bf16 units; the step runs fp32 activations
QUANT = {"fp32": None, "int8": lambda: lowbit.config("int8", quantize_embeddings=True, **FP32),
         "int4": lambda: lowbit.config("int4", group_size=32, **FP32),
         "nf4": lambda: lowbit.config("nf4", block_size=32, **FP32)}


@pytest.mark.parametrize("quant", list(QUANT))
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma3"])
def test_logits_are_transformers_own(kind, quant, tmp_path):
    """Every position's logits match transformers' cached forward on the same (quantized, fused) layers: fp32
    activations (the kernels LOWBIT_CPU_TUNE=0 picks), so only the order of sums differs. 20 tokens pass Gemma's
    sliding window of 8."""
    model = gemma(tmp_path) if kind == "gemma3" else tiny(kind)
    if QUANT[quant]:
        lowbit.quantize_(model, QUANT[quant]())
        lowbit.fuse_projections(model)
    ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(1))
    want = stepwise(model, ids)
    got = c_logits(CpuStep(model, 32), ids)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max(), (got - want).abs().max()


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_prefill_fills_the_cache_the_step_would(kind, tmp_path, monkeypatch):
    """The prompt runs through the model's own forward at once; the keys and values copied from its cache are those
    the C step computes token by token at every position the next step reads (Gemma's sliding layer keeps only the
    last window - 1: the prompt of 20 is longer than its window of 8), and the first token is the same."""
    model = gemma(tmp_path) if kind == "gemma3" else tiny(kind)
    lowbit.quantize_(model, QUANT["int4"]())
    ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(6))
    by_step = CpuStep(model, 32)
    first = [by_step.step(t, p) for p, t in enumerate(ids[0].tolist())][-1]
    prefilled = CpuStep(model, 32)
    monkeypatch.setattr(decode_cpu, "PREFILL_MIN", 2)
    assert prefilled.prefill(ids) == first
    read = 8 - 1 if kind == "gemma3" else 20  # position 20 attends to 13..20 through a window of 8
    for i in range(by_step.k_cache.shape[0]):
        keep = slice(20 - read, 20) if i == 0 else slice(0, 20)  # Gemma's block 0 is a sliding one
        for want, got in ((by_step.k_cache, prefilled.k_cache), (by_step.v_cache, prefilled.v_cache)):
            assert torch.allclose(got[i, :, keep], want[i, :, keep], atol=1e-4), (i, (got - want).abs().max())


@pytest.mark.parametrize("kernel", ["cpu_dot4", "cpu_dot8"])
def test_integer_dot_kernels_run_in_the_step(kernel):
    """The kernels that round activations to int8 (chosen by the CPU tuner) run in the step too: the rounding makes
    the order of sums visible, so the logits agree to a looser bound."""
    model = tiny("llama")
    bits = 4 if kernel == "cpu_dot4" else 8
    lowbit.quantize_(model, lowbit.config(f"int{bits}", group_size=32, kernel=kernel, **FP32))
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    step = CpuStep(model, 16)
    assert {s.attn_in[0].kind for s in step.blocks} == {5 if bits == 8 else 4}  # the C kernel the layer runs
    want = stepwise(model, ids)
    got = c_logits(step, ids)
    assert (got - want).abs().max() <= 0.02 * want.abs().max(), (got - want).abs().max()


@pytest.mark.parametrize("bits", [4, 8])
def test_bf16_activation_layers_are_prepared_again(bits):
    """Layers that chose kernels with bf16 activations (no C form) choose again among the fp32 kernels and are fused;
    the step then matches transformers' forward on the layers as they are now."""
    model = tiny("llama")
    lowbit.quantize_(model, lowbit.config(f"int{bits}", group_size=32 if bits == 4 else None, compute_dtype="bfloat16"))
    lowbit.fuse_projections(model)
    q = model.model.layers[0].self_attn.q_proj
    assert q.compute_dtype == torch.bfloat16 and q.kernel.native_call(q._buffers, q._prepared, q.request) is None
    step = CpuStep(model, 16)
    assert q.fused is not None and q.fused[0].linear.compute_dtype == torch.float32
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(7))
    want = stepwise(model, ids)
    assert (c_logits(step, ids) - want).abs().max() <= 1e-4 * want.abs().max()


def test_decoder_and_generate_use_the_c_step(tmp_path):
    """``compile_for_decode`` on the CPU runs a batch of one with the C step and gives transformers' greedy tokens; a
    batch of two runs the Python step (same tokens); a prompt longer than the cache grows it."""
    model = tiny("llama")
    lowbit.quantize_(model, lowbit.config("int4", group_size=32, **FP32))
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = model.generate(ids, do_sample=False, max_new_tokens=10, min_new_tokens=10)
    decoder = lowbit.compile_for_decode(model)
    assert decoder.c_step_reason is None
    assert torch.equal(decoder.generate(ids[:1], 10), ref[:1])
    assert decoder._c_step is not None and decoder._c_step.max_len == 256
    assert torch.equal(decoder.generate(ids, 10), ref)  # batch 2: the Python step
    long = torch.randint(0, 128, (1, 250), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ref = model.generate(long, do_sample=False, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(decoder.generate(long, 8), ref) and decoder._c_step.max_len == 512


def test_what_the_step_refuses():
    """Models the step does not compute are named with the reason, and decode in Python with the same tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)).eval()
    assert "model_type 'gpt2'" in why_not(gpt2)
    bf16 = tiny("llama").to(torch.bfloat16)
    with pytest.raises(Unsupported, match=r"is a Linear of torch.bfloat16"):
        CpuStep(bf16, 16)
    decoder = lowbit.compile_for_decode(bf16)
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = bf16.generate(ids, do_sample=False, max_new_tokens=4, min_new_tokens=4)
    assert torch.equal(decoder.generate(ids, 4), ref)
    assert "bfloat16" in decoder.c_step_reason
    step = CpuStep(tiny("llama"), 8)
    with pytest.raises(LowbitError, match="exceed the cache of 8 positions"):
        step.generate(ids, 4)


@pytest.mark.realmodel
@pytest.mark.parametrize("name,group", [("smollm2-135m", 64), ("gemma-3-270m", 128)])
def test_real_models_decode_transformers_greedy_tokens(name, group):
    """SmolLM2-135M and Gemma-3-270M, int4 on load: ``lowbit.generate`` runs the C step and writes the text that
    transformers' own greedy ``generate`` writes with the same quantized layers."""
    from transformers import AutoTokenizer

    from lowbit import realmodels

    if not realmodels.available(name):
        pytest.skip(realmodels.MODELS[name].pip)
    path = realmodels.model_path(name)
    tok = AutoTokenizer.from_pretrained(path)
    model = lowbit.from_pretrained(path, quantization=lowbit.config("int4", group_size=group, **FP32)).eval()
    got = lowbit.generate(model, "The history of the printing press begins", tokenizer=tok, max_new_tokens=16)
    assert got.engine == "lowbit C step" and got.new_tokens == 16
    ids = tok("The history of the printing press begins", return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = model.generate(ids, do_sample=False, max_new_tokens=16, min_new_tokens=16, pad_token_id=tok.eos_token_id)
    assert got.text == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_model_generate_runs_the_c_step_after_compile_for_decode(kind, tmp_path, monkeypatch):
    """After ``compile_for_decode`` on the CPU, ``model.generate`` itself decodes with the C step (counted), with the
    tokens it gave before: past the first cache of 256 positions (which grows), with a static cache, twice in a row;
    a batch of two runs the original forward."""
    model = gemma(tmp_path) if kind == "gemma3" else tiny(kind)
    lowbit.quantize_(model, QUANT["int4"]())
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(8))
    two = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(9))

    def greedy(x, n, **kw):
        with torch.inference_mode():
            return model.generate(x, do_sample=False, max_new_tokens=n, min_new_tokens=n, **kw)

    ref, ref_two = greedy(ids, 300), greedy(two, 5)
    steps = []
    original = CpuStep.step
    monkeypatch.setattr(CpuStep, "step", lambda self, tok, pos: steps.append(pos) or original(self, tok, pos))
    lowbit.compile_for_decode(model)
    assert torch.equal(greedy(ids, 300), ref) and steps == list(range(6, 305))
    assert torch.equal(greedy(ids, 20), ref[:, :26]) and len(steps) == 299 + 19
    assert torch.equal(greedy(ids, 20, cache_implementation="static"), ref[:, :26]) and len(steps) == 299 + 38
    assert torch.equal(greedy(two, 5), ref_two) and len(steps) == 299 + 38


def test_a_cache_the_c_step_advanced_can_be_continued():
    """The C step does not write transformers' cache; continuing that cache (a chat's next turn) first runs the
    tokens it took through the model's forward: the logits are those of the model without the C step. A call out of
    turn is one line; ``detach`` gives the model its own forward back."""
    from transformers import DynamicCache

    model = tiny("llama")
    lowbit.quantize_(model, QUANT["int4"]())
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(10))
    more = torch.tensor([[5, 6, 7]])

    def turns():
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            out = model.generate(ids, do_sample=False, max_new_tokens=4, min_new_tokens=4, past_key_values=cache)
            # the last new token was never fed: it opens the next turn
            nxt = model(torch.cat([out[:, -1:], more], 1), past_key_values=cache, use_cache=True,
                        position_ids=torch.arange(9, 13)[None]).logits
            return out, nxt, cache

    ref, ref_next, _ = turns()
    lowbit.compile_for_decode(model)
    out, nxt, cache = turns()
    assert torch.equal(out, ref) and torch.allclose(nxt, ref_next, atol=1e-4)
    with pytest.raises(LowbitError, match="a call at position 3 on a cache that lowbit's decode step holds at "
                                          "position 13"), torch.inference_mode():
        model(torch.tensor([[1]]), past_key_values=cache, use_cache=True, position_ids=torch.tensor([[3]]))
    stepping.detach(model)
    assert model.forward.__func__ is type(model).forward
