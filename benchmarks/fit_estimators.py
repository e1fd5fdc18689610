"""Which sensitivity estimator should ``lowbit fit`` use? Both on one model, judged by real perplexity.

For SmolLM2-135M (g64) and data-free candidates, the per-layer sensitivities are measured with each estimator
(``fisher``: loss increase predicted from the squared loss gradients; ``output``: squared relative output error;
``loss``: loss increase with only that layer quantized, measured: one forward pass per layer and candidate, too slow
for the shared CPU here, so not in the default list) on the same calibration windows; a plan is chosen with each at several budgets, and every plan (and the uniform settings) is
scored on the same wiki.eval.txt windows. Reported: the perplexity of each plan, and how well each estimator's
predicted total ranks the measured log-perplexity increase over all plans (Spearman).

    nice -n 5 python benchmarks/fit_estimators.py [--budgets 3.5 4.0] [--eval-tokens 4096]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe_device, print_table, write_results  # noqa: E402

import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit import realmodels  # noqa: E402
from lowbit.data import text_path  # noqa: E402
from lowbit.eval import load_text, perplexity  # noqa: E402
from lowbit.eval.report import calibration_ids  # noqa: E402
from lowbit.fitting.candidates import layout, parse_candidates  # noqa: E402
from lowbit.fitting.plan import choose, parse_budget  # noqa: E402
from lowbit.fitting.run import plan_config  # noqa: E402
from lowbit.fitting.sensitivity import measure  # noqa: E402
from lowbit.loading.checkpoint import open_checkpoint  # noqa: E402
from lowbit.loading.tokenizer import load_tokenizer  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    ra = {i: r for r, i in enumerate(sorted(range(len(a)), key=lambda i: a[i]))}
    rb = {i: r for r, i in enumerate(sorted(range(len(b)), key=lambda i: b[i]))}
    n = len(a)
    return 1 - 6 * sum((ra[i] - rb[i]) ** 2 for i in range(n)) / (n * (n * n - 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--candidates", default="int8,int4,int3,hqq4,nf4")
    ap.add_argument("--budgets", nargs="+", type=float, default=[3.75, 4.0, 4.375])
    ap.add_argument("--estimators", nargs="+", default=["fisher", "output"], choices=["fisher", "output", "loss"])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    args = ap.parse_args()
    torch.manual_seed(0)
    path = realmodels.model_path(args.model)
    tok = load_tokenizer(path)
    text = load_text(text_path("wiki.eval.txt"))
    cands = parse_candidates(args.candidates, args.group_size)
    lay = layout(open_checkpoint(path), cands)
    ids = calibration_ids(tok, load_text(text_path("wiki.calib.txt")), args.samples, args.seq_len)
    model = lowbit.from_pretrained(path, dtype=torch.float32)
    fp32 = perplexity(model, tok, text, max_tokens=args.eval_tokens).ppl
    sens, seconds = {}, {}
    for est in args.estimators:
        t = time.perf_counter()
        sens[est] = measure(model, ids, lay, cands, est, log=print)
        seconds[est] = time.perf_counter() - t
        print(f"{est}: {seconds[est]:.0f} s", flush=True)
    del model
    plans = []  # (name, labels, bpw)
    for label in cands:
        if label != "int8":
            plans.append((f"uniform {label}", dict.fromkeys(lay.names, label)))
    for est in args.estimators:
        for b in args.budgets:
            plan = choose(lay, sens[est], parse_budget(f"{b}bpw"), str(path), est,
                          {k: c.to_dict() for k, c in cands.items()})
            plans.append((f"fit {b} bpw ({est})", plan.labels()))
    rows = []
    for name, labels in plans:
        from lowbit.methods.mixed import mixed_config

        cfg = mixed_config({k: cands[k] for k in set(labels.values())},
                           {n: (label, lay.formats[label][n]) for n, label in labels.items()})
        q = lowbit.from_pretrained(path, quantization=cfg, dtype=torch.float32)
        ppl = perplexity(q, tok, text, max_tokens=args.eval_tokens).ppl
        del q
        row = {"setting": name, "bpw": round(lay.bpw(labels), 4), "ppl": round(ppl, 3),
               "log_ppl_increase": math.log(ppl / fp32),
               **{f"predicted_{e}": sum(sens[e][label][n] for n, label in labels.items()) for e in sens}}
        rows.append(row)
        print(row, flush=True)
    corr = {e: spearman([r[f"predicted_{e}"] for r in rows], [r["log_ppl_increase"] for r in rows]) for e in sens}
    print_table(rows, ["setting", "bpw", "ppl", *(f"predicted_{e}" for e in args.estimators)])
    print(f"fp32 {fp32:.3f}; Spearman(predicted, measured log-ppl increase): {corr}; seconds {seconds}")
    write_results("fit-estimators", rows, describe_device(),
                  {"model": args.model, "fp32_ppl": fp32, "spearman": corr, "seconds": seconds, "args": vars(args)})


if __name__ == "__main__":
    main()
