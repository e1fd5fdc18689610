"""``lowbit.compile_for_decode``: the fast greedy decode path (fused projections, compiled blocks, one CUDA graph a
step). Its speed is measured by benchmarks/generate.py; here, that its tokens are the greedy ones."""

import pytest
import torch

import lowbit
from lowbit.errors import LowbitError

CUDA = torch.cuda.is_available()


def tiny_llama(device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=1024)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device, torch.bfloat16).eval()


def test_needs_a_cuda_or_cpu_model():
    with pytest.raises(LowbitError, match="needs the model on a CUDA device or the CPU"):
        lowbit.compile_for_decode(tiny_llama("meta"))


def test_cpu_tokens_are_transformers_greedy_ones():
    """On the CPU (no CUDA graphs, blocks not compiled by default): the same tokens as transformers' own greedy
    ``generate`` on the same quantized model; input on another device is one line."""
    model = tiny_llama("cpu").float()
    lowbit.quantize_(model, lowbit.config("int8", quantize_embeddings=True))  # an int8 QuantEmbedding too
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model.generate(ids, do_sample=False, max_new_tokens=12, min_new_tokens=12)
    decoder = lowbit.compile_for_decode(model)
    out = decoder.generate(ids, 12)
    assert torch.equal(out, ref) and torch.equal(decoder.generate(ids, 12), out)
    with pytest.raises(LowbitError, match="on the model's device"):
        decoder.generate(ids[0], 3)


def test_cpu_compiled_step_gives_the_eager_tokens():
    """``compile=True`` on the CPU compiles the whole forward (inductor's C++ wrapper): the same greedy tokens as the
    eager decoder, the prompt still run eagerly (one compiled graph for the step, none for the prompt). A batch of
    two: a batch of one would run lowbit's C step where it can (tests/test_decode_cpu.py)."""
    model = tiny_llama("cpu").float()
    lowbit.quantize_(model, lowbit.config("int8"))
    ids = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(1))
    eager = lowbit.compile_for_decode(model).generate(ids, 6)
    torch._dynamo.reset()
    counts = torch._dynamo.utils.counters
    counts.clear()
    compiled = lowbit.compile_for_decode(model, compile=True)
    assert torch.equal(compiled.generate(ids, 6), eager)
    assert counts["stats"]["unique_graphs"] == 1, dict(counts["stats"])


@pytest.mark.skipif(not CUDA, reason="no CUDA device: the fast path records CUDA graphs (gpu_run.sh runs it)")
@pytest.mark.parametrize("compile", [False, True], ids=["eager-blocks", "compiled-blocks"])
def test_tokens_are_the_greedy_continuation(compile):
    """Every generated token is the argmax of the model's own logits over the sequence so far (teacher-forced,
    plain eager model), up to a rounding margin for near ties; twice the same call gives the same tokens."""
    model = tiny_llama("cuda")
    lowbit.quantize_(model, lowbit.config("int4", group_size=128))
    ids = torch.randint(0, 128, (2, 7), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    decoder = lowbit.compile_for_decode(model, compile=compile)
    out = decoder.generate(ids, 40)
    again = decoder.generate(ids, 40)
    assert out.shape == (2, 47) and torch.equal(out[:, :7], ids)
    assert torch.equal(out, again)
    with torch.inference_mode():
        logits = model(out).logits.float()[:, 6:-1]  # the logits that chose tokens 7..46
    chosen = logits.gather(-1, out[:, 7:, None])[..., 0]
    margin = 0.02 * logits.std()
    assert bool((chosen >= logits.max(-1).values - margin).all()), (chosen - logits.max(-1).values).min()


def _greedy_within_margin(model, out, prompt):
    """Every token after the prompt is the argmax of the plain model's logits over the sequence before it (teacher
    forced), up to a rounding margin for near ties."""
    with torch.inference_mode():
        logits = model(out).logits.float()[:, prompt - 1:-1]
    chosen = logits.gather(-1, out[:, prompt:, None])[..., 0]
    return bool((chosen >= logits.max(-1).values - 0.02 * logits.std()).all())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not CUDA, reason="no CUDA device: there the step is a recorded CUDA graph (gpu_run.sh runs it)"))])
def test_model_generate_replays_the_recorded_step(monkeypatch, device):
    """With ``GraphEngine`` attached (on CUDA by ``compile_for_decode``; on the CPU the same engine runs its step
    eagerly), ``model.generate`` of a batch of one runs its steps (counted), past its first cache (which doubles);
    its tokens are greedy ones. Continuing the cache it was given (a chat's next turn) first runs the tokens it lacks
    through the model: the next logits are the plain model's. A batch of two runs the model's own forward."""
    from transformers import DynamicCache

    from lowbit import generation, stepping

    monkeypatch.setattr(generation, "CACHE_STEP", 16)
    model = tiny_llama(device)
    lowbit.quantize_(model, lowbit.config("int4", group_size=128))
    ids = torch.randint(0, 128, (1, 7), device=device, generator=torch.Generator(device).manual_seed(1))
    two = torch.randint(0, 128, (2, 7), device=device, generator=torch.Generator(device).manual_seed(2))
    more = torch.tensor([[5, 6, 7]], device=device)
    steps = []
    original = generation.GraphEngine.step
    monkeypatch.setattr(generation.GraphEngine, "step",
                        lambda self, x, pos, lacking: steps.append(pos) or original(self, x, pos, lacking))
    if device == "cuda":  # compile_for_decode attaches the engine itself there
        lowbit.compile_for_decode(model)
    else:
        stepping.attach(model, generation.GraphEngine(model))
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model.generate(ids, do_sample=False, max_new_tokens=60, min_new_tokens=60, past_key_values=cache)
        nxt = model(torch.cat([out[:, -1:], more], 1), past_key_values=cache, use_cache=True,
                    position_ids=torch.arange(66, 70, device=device)[None]).logits.float()
        batch = model.generate(two, do_sample=False, max_new_tokens=5, min_new_tokens=5)
    assert steps == list(range(7, 66))
    stepping.detach(model)
    if device == "cpu":  # the same kernels as the plain generate (whose int8-rounded activations break near ties)
        with torch.inference_mode():
            assert torch.equal(out, model.generate(ids, do_sample=False, max_new_tokens=60, min_new_tokens=60))
    else:
        assert _greedy_within_margin(model, out, 7) and _greedy_within_margin(model, batch, 7)
    assert len(steps) == 59  # the batch of two took none
    with torch.inference_mode():
        ref = model(torch.cat([out, more], 1)).logits.float()[:, -4:]
    assert torch.allclose(nxt, ref, atol=0.05 * float(ref.std())), (nxt - ref).abs().max()
