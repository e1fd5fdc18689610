"""Quality of the calibrated methods (GPTQ, AWQ, SmoothQuant) on the real models, beside RTN and fp32.

Each setting is quantized block by block from ``--samples`` windows of ``--seq-len`` tokens of wiki.calib.txt
(seed 0), saved, loaded and scored on the first 8,192 tokens of wiki.eval.txt in 512-token windows (the BOS rule
of REALMODELS.md), as benchmarks/quality.py scores the data-free methods. Gemma-3-270M at group 128, SmolLM2-135M
at group 64. Also records the quantization time and the process's peak RSS.

    python benchmarks/calibrated_quality.py [--models gemma-3-270m] [--only gptq awq] [--samples 32] [--device cuda]
"""

from __future__ import annotations

import argparse
import resource
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
from lowbit.registry import get  # noqa: E402


def settings(g: int) -> list[tuple[str, dict]]:
    return [
        ("int4", {"group_size": g}),
        ("gptq", {"bits": 4, "group_size": g}),
        ("gptq", {"bits": 4, "group_size": g, "act_order": True}),
        ("gptq", {"bits": 4, "group_size": g, "act_order": True, "static_groups": True}),
        ("gptq", {"bits": 4, "group_size": g, "act_order": True, "mse": True}),
        ("gptq", {"bits": 4, "group_size": g, "act_order": True, "awq_balance": True}),
        ("awq", {"bits": 4, "group_size": g}),
        ("int3", {"group_size": g}),
        ("gptq", {"bits": 3, "group_size": g}),
        ("gptq", {"bits": 3, "group_size": g, "act_order": True}),
        ("gptq", {"bits": 3, "group_size": g, "act_order": True, "mse": True}),
        ("gptq", {"bits": 3, "group_size": g, "act_order": True, "mse": True, "awq_balance": True}),
        ("awq", {"bits": 3, "group_size": g}),
        ("int8", {}),
        ("smoothquant", {}),
    ]


SETTINGS = {"gemma-3-270m": settings(128), "smollm2-135m": settings(64)}


def label(method: str, fields: dict | None) -> str:
    return method + "".join(f" {k}={v}" for k, v in (fields or {}).items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--only", nargs="+", default=None,
                    help="methods or whole settings (e.g. 'gptq bits=3 group_size=128') to run; fp32 always runs")
    ap.add_argument("--name", default=None, help="results file name (default from --models and --only)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--results-dir", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # group-size fallbacks on SmolLM2 are expected and recorded per layer
    text = load_text(text_path("wiki.eval.txt"))
    calib = load_text(text_path("wiki.calib.txt"))
    rows = []
    for name in args.models:
        path = realmodels.model_path(name)
        tok = load_tokenizer(path)
        todo = [("fp32", None)] + [s for s in SETTINGS[name] if not args.only or s[0] in args.only
                                   or label(*s) in args.only]
        for method, fields in todo:
            if fields is not None and method not in lowbit.methods():
                print(f"skipping {method}: not registered", flush=True)
                continue
            setting = label(method, fields)
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                row = {"model": name, "setting": setting}
                if fields is None:
                    model = lowbit.from_pretrained(path, device=args.device)
                elif get(method).quantizer_cls.requires_calibration:
                    out, quantizer = lowbit.quantize_calibrated(
                        path, Path(tmp) / "m", lowbit.config(method, **fields), text=calib, samples=args.samples,
                        seq_len=args.seq_len, device=args.device)
                    row.update(quantize_s=round(time.perf_counter() - start, 1), note=quantizer.summary())
                    model = lowbit.from_pretrained(out, device=args.device)
                else:
                    model = lowbit.from_pretrained(path, quantization=lowbit.config(method, **fields), device=args.device)
                result = perplexity(model, tok, text, ctx=512, max_tokens=args.max_tokens)
            row.update(ppl=round(result.ppl, 3), tokens=result.tokens, seconds=round(time.perf_counter() - start, 1),
                       peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
            rows.append(row)
            print(row, flush=True)
            del model
    for row in rows:
        base = next(r["ppl"] for r in rows if r["model"] == row["model"] and r["setting"] == "fp32")
        row["vs_fp32"] = round(row["ppl"] / base, 4)
    print_table(rows, ["model", "setting", "ppl", "vs_fp32", "quantize_s"],
                title=f"perplexity, first {args.max_tokens} tokens of wiki.eval.txt; calibration {args.samples} x "
                      f"{args.seq_len} tokens of wiki.calib.txt")
    only = "" if not args.only else "-" + "-".join(x.split()[0] for x in args.only)
    extra = {"calibration": {"samples": args.samples, "seq_len": args.seq_len, "seed": 0, "text": "wiki.calib.txt"}}
    print(write_results(args.name or "calibrated-quality-" + "-".join(args.models) + only, rows, describe_device(), extra=extra,
                        results_dir=args.results_dir))


if __name__ == "__main__":
    main()
