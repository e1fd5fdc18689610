"""``lowbit demo``: a real model quantized to int8 and int4 on the CPU, with size, quality and speed.

Each row is printed as soon as it is measured; loading (with quantization), perplexity and generation show tqdm
bars with an ETA. The fp32 row's size is its checkpoint's; the quantized rows are saved to a temporary folder and
measured there. The header names the CPU, the vector instructions lowbit's kernels use there and whether it has bf16
units (AVX512-BF16 or AMX); each quantized layer's kernel is chosen by measurement on that CPU.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

import lowbit
from lowbit import realmodels
from lowbit.data import text_path
from lowbit.kernels.cpu.features import cpu_has_bf16, isa
from lowbit.loading.tokenizer import load_tokenizer

PROMPT = "Asphalt is a sticky, black and highly viscous"
_WIDTHS = (38, 16, 8, 14, 14, 8)  # model, size, smaller, quality, speed, seconds


def sample_text() -> str:
    return text_path("sample.txt").read_text(encoding="utf-8")


def _variants():
    return [("fp32 (original)", None),
            ("int8 per-channel (+ int8 embedding)", lowbit.config("int8", quantize_embeddings=True,
                                                                   quantize_lm_head=True)),
            ("int4 g128 (+ int8 embedding)", lowbit.config("int4", group_size=128, quantize_embeddings=True,
                                                            quantize_lm_head=True))]


def _files_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _size_on_disk(model, tmp: Path, label: str) -> int:
    return _files_size(lowbit.save_pretrained(model, tmp / label.split()[0], progress=True))


def _generate(model, tok, n: int) -> tuple[float, str, str]:
    """(decode tok/s, the continuation, the engine) from ``lowbit.generate``: on the CPU its C decode step where
    the model allows (the same for the fp32 row, so the rows differ by their weights only), after a warm-up."""
    from lowbit.textgen import generate

    generate(model, PROMPT, tokenizer=tok, max_new_tokens=2)  # warm-up: kernel builds, the CPU tuner's choice
    g = generate(model, PROMPT, tokenizer=tok, max_new_tokens=n)
    return g.decode_tok_s, g.text.strip().replace("\n", " "), g.engine


def _embed(model, tok, sentences):
    batch = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        start = time.perf_counter()
        hidden = model(**batch).last_hidden_state
        elapsed = time.perf_counter() - start
    mask = batch["attention_mask"][..., None]
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    return emb, len(sentences) / elapsed


def _line(cells) -> str:
    return "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, _WIDTHS)))


def cpu_line() -> str:
    name = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    units = (f"{isa().upper()}, {'with' if cpu_has_bf16() else 'without'} bf16 units (AVX512-BF16/AMX): each "
             "quantized layer's kernel measured on this CPU (lowbit inspect says which)")
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, {units}"


def run_demo(name: str | None = None, max_tokens: int = 2048, gen_tokens: int = 32) -> int:
    from lowbit.eval import perplexity

    start = time.perf_counter()
    name = name or ("gemma-3-270m" if realmodels.available("gemma-3-270m") else "minilm")
    print(f"lowbit demo: {realmodels.MODELS[name].description}", flush=True)
    print(f"on {cpu_line()}", flush=True)
    path = realmodels.model_path(name)
    tok = load_tokenizer(path)
    causal = name != "minilm"
    text = sample_text()
    sentences = [line for line in text.splitlines() if len(line) > 60][:32]
    quality = (f"perplexity on {max_tokens} tokens of bundled Wikipedia text (lower is better)" if causal else
               f"embedding cosine vs fp32 on {len(sentences)} sentences (higher is better)")
    print(quality, flush=True)
    header = _line(["model", "weights on disk", "smaller", "perplexity" if causal else "cosine vs fp32",
                    "decode tok/s" if causal else "sentences/s", "seconds"])
    print(header + "\n" + "-" * len(header), flush=True)
    base_size, ref, continuations, engines = _files_size(path), None, [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for label, cfg in _variants():
            t0 = time.perf_counter()
            model = lowbit.from_pretrained(path, quantization=cfg, progress=True)
            size = base_size if cfg is None else _size_on_disk(model, Path(tmp), label)
            row = [label, f"{size / 1e6:.0f} MB", f"{base_size / size:.2f}x"]
            if causal:
                ppl = perplexity(model, tok, text, ctx=512, max_tokens=max_tokens, progress=True)
                speed, words, engine = _generate(model, tok, gen_tokens)
                row += [f"{ppl.ppl:.2f}", f"{speed:.1f}"]
                continuations.append(f"{label}: {PROMPT} >> {words}")
                engines.add(engine)
            else:
                emb, speed = _embed(model, tok, sentences)
                ref = emb if ref is None else ref
                row += [f"{(emb * ref).sum(-1).mean().item():.4f}", f"{speed:.1f}"]
            print(_line([*row, f"{time.perf_counter() - t0:.0f}"]), flush=True)
            del model
    for line in continuations:
        print(line)
    if engines:
        print(f"decode: {'; '.join(sorted(engines))} (tokens 2..{gen_tokens}, greedy)")
    print(f"demo done in {time.perf_counter() - start:.0f} s. Try: lowbit quantize SRC OUT --method int4", flush=True)
    return 0
