"""``lowbit demo``: a real model quantized to int8 and int4 on the CPU, with size, quality and speed."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

import lowbit
from lowbit import realmodels
from lowbit.data import text_path
from lowbit.loading.tokenizer import load_tokenizer

PROMPT = "Asphalt is a sticky, black and highly viscous"


def sample_text() -> str:
    return text_path("sample.txt").read_text(encoding="utf-8")


def _variants():
    return [("fp32 (original)", None),
            ("int8 per-channel", lowbit.config("int8", quantize_embeddings=True, quantize_lm_head=True)),
            ("int4 g128", lowbit.config("int4", group_size=128, quantize_embeddings=True, quantize_lm_head=True))]


def _size_on_disk(model, tmp: Path, label: str) -> int:
    out = lowbit.save_pretrained(model, tmp / label.split()[0])
    return sum(p.stat().st_size for p in out.glob("*.safetensors"))


def _generate(model, tok, n: int) -> tuple[float, str]:
    ids = tok(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        model.generate(**ids, max_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        elapsed = time.perf_counter() - start
    new = out[0, ids["input_ids"].shape[1]:]
    return len(new) / elapsed, tok.decode(new, skip_special_tokens=True).strip().replace("\n", " ")


def _embed(model, tok, sentences):
    batch = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        start = time.perf_counter()
        hidden = model(**batch).last_hidden_state
        elapsed = time.perf_counter() - start
    mask = batch["attention_mask"][..., None]
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    return emb, len(sentences) / elapsed


def run_demo(name: str | None = None, max_tokens: int = 2048, gen_tokens: int = 32) -> int:
    from rich.console import Console
    from rich.table import Table

    from lowbit.eval import perplexity

    console = Console()
    name = name or ("gemma-3-270m" if realmodels.available("gemma-3-270m") else "minilm")
    console.print(f"[bold]lowbit demo[/bold]: {realmodels.MODELS[name].description}")
    path = realmodels.model_path(name)
    tok = load_tokenizer(path)
    causal = name != "minilm"
    text = sample_text()
    sentences = [line for line in text.splitlines() if len(line) > 60][:32]
    table = Table(title=f"{name} on {torch.get_num_threads()} CPU threads" + (
        f"; perplexity on {max_tokens} tokens of bundled Wikipedia text (lower is better)" if causal else
        f"; embedding cosine vs fp32 on {len(sentences)} sentences (higher is better)"))
    cols = ["model", "weights on disk", "smaller", "perplexity" if causal else "cosine vs fp32",
            "generate tok/s" if causal else "sentences/s"]
    for col in cols:
        table.add_column(col)
    base_size, ref, continuations = None, None, []
    with tempfile.TemporaryDirectory() as tmp:
        for label, cfg in _variants():
            with console.status(f"{label}: loading and quantizing"):
                model = lowbit.from_pretrained(path, quantization=cfg)
                size = _size_on_disk(model, Path(tmp), label)
            base_size = base_size or size
            row = [label, f"{size / 1e6:.0f} MB", f"{base_size / size:.2f}x"]
            with console.status(f"{label}: measuring"):
                if causal:
                    ppl = perplexity(model, tok, text, ctx=512, max_tokens=max_tokens)
                    speed, words = _generate(model, tok, gen_tokens)
                    row += [f"{ppl.ppl:.2f}", f"{speed:.1f}"]
                    continuations.append(f"[bold]{label}[/bold]: {PROMPT} [italic]{words}[/italic]")
                else:
                    emb, speed = _embed(model, tok, sentences)
                    ref = emb if ref is None else ref
                    row += [f"{(emb * ref).sum(-1).mean().item():.4f}", f"{speed:.1f}"]
            table.add_row(*row)
            del model
    console.print(table)
    for line in continuations:
        console.print(line)
    console.print("int8/int4 rows also store the embedding table as int8. Try: lowbit quantize SRC OUT --method int4")
    return 0
