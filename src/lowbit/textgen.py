"""``lowbit.generate``: a prompt in, its greedy continuation out, with the time to the first token and the decode
speed measured apart (what ``lowbit generate`` prints).

The model is loaded (and quantized on load, if asked) by ``from_pretrained``, its sibling projections fused
(q/k/v and gate/up as one quantized layer each, from ``archs.py``), and decoded on the CPU by lowbit's C step where
the model allows (``decode_cpu``: the whole step in one C call per token), else by transformers' ``generate`` with a
static KV cache (preallocated once; no cache growth per token); ``Generation.engine`` says which, and why. The
first token's time includes the prompt and, on the CPU, the one-time work of the first use: building lowbit's C
kernels and measuring the kernel choice (cached per CPU afterwards, ``kernels/cpu/tune.py``).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path

import torch

from lowbit.errors import ConfigError


@dataclasses.dataclass
class Generation:
    text: str  # the continuation only
    prompt_tokens: int
    new_tokens: int
    load_s: float
    first_token_s: float  # prompt + first token, one-time set-up included
    decode_tok_s: float  # tokens 2..n
    threads: int
    kernels: dict[str, int]  # kernel/compute dtype → number of quantized layers running it
    engine: str = "transformers"  # "lowbit C step" or "transformers" (and why not the C step, on the CPU)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Clock:
    """A transformers streamer that only notes when each piece arrives (the prompt first, then one token each)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def generate(model, prompt: str, *, tokenizer=None, max_new_tokens: int = 32, quantization=None,
             device: str = "cpu", threads: int | None = None, fuse: bool = True, static_cache: bool = True,
             compile: bool = False, engine: str = "auto") -> Generation:
    """Greedy continuation of ``prompt`` by ``model`` (a folder path, or a loaded causal LM with ``tokenizer``).

    ``quantization``: a config to quantize a full-precision folder on load. ``fuse``: q/k/v and gate/up as one layer
    each. ``static_cache``: transformers' preallocated KV cache. ``compile``: each transformer block through
    ``torch.compile`` (implies the static cache; the first call then includes the compilation, minutes on a small
    CPU, and on the 2-core machine of benchmarks/cpu_decode.py it decoded slower than eager; on the CPU
    ``lowbit.compile_for_decode(model, compile=True)`` compiles the whole step instead, 1.4x the eager decode).
    ``engine``: "auto" decodes a CPU model with lowbit's C step where it can (not with ``compile``, which asks for
    transformers' step compiled), "transformers" always with transformers' ``generate``.
    """
    from transformers import AutoTokenizer

    from lowbit.generation import compile_blocks
    from lowbit.loading.pipeline import from_pretrained
    from lowbit.nn import QuantLinear, fuse_projections

    if engine not in ("auto", "transformers"):
        raise ConfigError(f"engine={engine!r}; expected 'auto' (lowbit's C step on the CPU where it can) or "
                          "'transformers'")
    if max_new_tokens < 2:
        raise ConfigError(f"max_new_tokens={max_new_tokens}; expected at least 2 (the first token is timed apart)")
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if isinstance(model, (str, Path)):
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        model = from_pretrained(model, quantization, device=device)
    elif tokenizer is None:
        raise ConfigError("a loaded model needs tokenizer=...; pass the tokenizer, or the model's folder instead")
    load_s = time.perf_counter() - t0
    model.eval()
    if fuse:
        fuse_projections(model)
    if compile:
        compile_blocks(model)
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
    clock = _Clock()
    start = time.perf_counter()
    used, out = _c_step(model, ids, max_new_tokens, clock.times, engine, compile)
    if out is None:
        with torch.inference_mode():
            out = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 cache_implementation="static" if static_cache or compile else None, streamer=clock,
                                 pad_token_id=tokenizer.eos_token_id)
        clock.times.pop(0)  # the first put is the prompt
    new = out[0, ids.shape[1]:]
    tokens = clock.times
    decode_s = tokens[-1] - tokens[0]
    kernels = Counter(f"{m.kernel.name}/{str(m.compute_dtype).removeprefix('torch.')}" for m in model.modules()
                      if isinstance(m, QuantLinear) and m.kernel is not None)
    return Generation(text=tokenizer.decode(new, skip_special_tokens=True), prompt_tokens=ids.shape[1],
                      new_tokens=len(new), load_s=round(load_s, 2), first_token_s=round(tokens[0] - start, 3),
                      decode_tok_s=round((len(tokens) - 1) / decode_s, 2) if decode_s > 0 else float("inf"),
                      threads=torch.get_num_threads(), kernels=dict(kernels), engine=used)


def _c_step(model, ids, max_new_tokens: int, times: list[float], engine: str, compile: bool):
    """("lowbit C step", tokens) where the C step decodes ``model``; else (why not, None)."""
    from lowbit.decode_cpu import CpuStep, Unsupported, why_not

    if engine == "transformers" or compile:
        return f"transformers ({'compile' if compile else 'engine'} asked for)", None
    if ids.device.type != "cpu" or ids.shape[0] != 1:
        return "transformers", None
    reason = why_not(model)
    if reason is None:
        try:
            step = CpuStep(model, ids.shape[1] + max_new_tokens)
            return "lowbit C step", step.generate(ids, max_new_tokens, times)
        except Unsupported as e:
            reason = str(e)
    return f"transformers (not the C step: {reason})", None
