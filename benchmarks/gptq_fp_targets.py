"""GPTQ with and without ``fp_targets`` (each Linear fitted to the full-precision model's outputs) on a real model.

Each row quantizes the model with ``lowbit.quantize_calibrated`` (act_order + static_groups, + mse at 3 bits, as
the fit curve's GPTQ candidates) on ``--calib-samples`` windows of 512 tokens of wiki.calib.txt, then scores
perplexity on the first ``--eval-tokens`` tokens of wiki.eval.txt in 512-token windows, and records the seconds.

    python benchmarks/gptq_fp_targets.py [--model smollm2-135m] [--group 64] [--bits 3 4] [--alphas 0 1] [--label L]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe_device, print_table, write_results  # noqa: E402

import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit import realmodels  # noqa: E402
from lowbit.data import text_path  # noqa: E402
from lowbit.eval import load_text, perplexity  # noqa: E402
from lowbit.loading.tokenizer import load_tokenizer  # noqa: E402


def row(model: str, group: int, bits: int, alpha: float, args, work: Path) -> dict:
    path = realmodels.model_path(model)
    cfg = lowbit.config("gptq", bits=bits, group_size=group, act_order=True, mse=bits == 3, static_groups=True,
                        fp_targets=alpha > 0, fp_alpha=alpha or 1.0)
    t = time.perf_counter()
    out, _ = lowbit.quantize_calibrated(path, work / f"q{bits}-{alpha}", cfg, overwrite=True,
                                        text=load_text(text_path("wiki.calib.txt")), samples=args.calib_samples,
                                        seq_len=512)
    seconds = time.perf_counter() - t
    ppl = perplexity(lowbit.from_pretrained(out, dtype=torch.float32), load_tokenizer(path),
                     load_text(text_path("wiki.eval.txt")), max_tokens=args.eval_tokens).ppl
    return {"model": model, "bits": bits, "group": group, "fp_targets": alpha > 0, "fp_alpha": alpha,
            "ppl": round(ppl, 3), "quantize_seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(realmodels.MODELS))
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 1.0],
                    help="fp_alpha per row; 0: plain GPTQ (no fp_targets)")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gptq-fp-targets-") as work:
        for bits in args.bits:
            for alpha in args.alphas:
                rows.append(row(args.model, args.group, bits, alpha, args, Path(work)))
                print(rows[-1], flush=True)
    print_table(rows, ["model", "bits", "group", "fp_targets", "fp_alpha", "ppl", "quantize_seconds"])
    write_results(f"gptq-fp-targets-{args.model}" + (f"-{args.label}" if args.label else ""), rows,
                  describe_device(), {"args": vars(args)})


if __name__ == "__main__":
    main()
