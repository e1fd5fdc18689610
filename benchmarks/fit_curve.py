"""Perplexity against bits per weight: uniform settings and ``lowbit fit`` at several budgets, one PNG.

For each model (Gemma-3-270M at group 128, SmolLM2-135M at group 64): fp32, uniform RTN int4 and int3, uniform
GPTQ 4-bit (the best calibrated method of calibrated-quality-2026-11-26 that quantizes layer by layer), and
``fit`` at each budget with the candidates below. Sensitivities are measured once per model and every budget's
plan is chosen from them; each plan is quantized through the same path as ``lowbit fit`` (the calibration runner
when a GPTQ layer is in it, with the same calibration windows as the uniform GPTQ row). Every row is scored on the
same first ``--eval-tokens`` tokens of wiki.eval.txt in 512-token windows. Bits per weight: every stored bit of the
quantized Linears over their weights (as ``lowbit inspect`` counts them).

    nice -n 5 python benchmarks/fit_curve.py [--models smollm2-135m] [--budgets 3.25 3.5 4 4.5] [--plot out.png]

With calibrated candidates, as in the README's curve (about 5 minutes a GPTQ row per model on 2 cores):

    python benchmarks/fit_curve.py --candidates int8,gptq4+act_order,gptq3+act_order+mse \
        --uniform int4 gptq4+act_order gptq3+act_order+mse --calib-samples 32 --eval-tokens 8192 --label calibrated
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, describe_device, print_table, write_results  # noqa: E402

import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit import realmodels  # noqa: E402
from lowbit.calibration.data import calibration_samples  # noqa: E402
from lowbit.data import text_path  # noqa: E402
from lowbit.eval import load_text, perplexity  # noqa: E402
from lowbit.eval.report import calibration_ids  # noqa: E402
from lowbit.fitting.candidates import layout, parse_candidates  # noqa: E402
from lowbit.fitting.plan import choose, parse_budget  # noqa: E402
from lowbit.fitting.sensitivity import any_calibrated, measure  # noqa: E402
from lowbit.loading.checkpoint import open_checkpoint  # noqa: E402
from lowbit.loading.tokenizer import load_tokenizer  # noqa: E402
from lowbit.methods.mixed import mixed_config  # noqa: E402

GROUPS = {"gemma-3-270m": 128, "smollm2-135m": 64}
CANDIDATES = "int8,int4,int3,int2,nf4"  # data-free: what this shared 2-core CPU could measure in time
UNIFORM = ("int4", "int3", "gptq4")  # gptq4: the best calibrated method that quantizes layer by layer


def _name(stem: str, args) -> str:
    return f"{stem}-{args.label}" if args.label else stem


def _score(path, labels, cands, lay, tok, text, args, work: Path) -> float:
    cfg = mixed_config({k: cands[k] for k in set(labels.values())},
                       {n: (label, lay.formats[label][n]) for n, label in labels.items()})
    if cfg.needs_data():
        out = work / "q"
        lowbit.quantize_calibrated(path, out, cfg, text=load_text(text_path("wiki.calib.txt")),
                                   samples=args.calib_samples, seq_len=512, overwrite=True)
        model = lowbit.from_pretrained(out, dtype=torch.float32)
    else:
        model = lowbit.from_pretrained(path, quantization=cfg, dtype=torch.float32)
    return perplexity(model, tok, text, max_tokens=args.eval_tokens).ppl


def run_model(name: str, args, work: Path) -> list[dict]:
    path = realmodels.model_path(name)
    tok = load_tokenizer(path)
    text = load_text(text_path("wiki.eval.txt"))
    cands = parse_candidates(args.candidates, GROUPS[name])
    lay = layout(open_checkpoint(path), cands)
    cache = work / f"sens-{name}-{args.estimator}.json"
    model = lowbit.from_pretrained(path, dtype=torch.float32)
    rows = [{"model": name, "setting": "fp32", "bpw": 32.0,
             "ppl": perplexity(model, tok, text, max_tokens=args.eval_tokens).ppl}]
    print(rows[-1], flush=True)
    t = time.perf_counter()
    if cache.exists():
        sens = json.loads(cache.read_text())
    else:
        calib_text = load_text(text_path("wiki.calib.txt"))
        ids = calibration_ids(tok, calib_text, args.samples, args.seq_len)
        # GPTQ candidates scored with the Hessians of the windows _score quantizes them with
        calib = calibration_samples(tok, calib_text, args.calib_samples, 512) if any_calibrated(cands) else None
        sens = measure(model, ids, lay, cands, args.estimator, log=lambda s: print(s, flush=True), hessian_ids=calib)
        cache.write_text(json.dumps(sens))
    sens_seconds = time.perf_counter() - t
    del model
    settings = []
    for b in args.budgets:
        plan = choose(lay, sens, parse_budget(f"{b}bpw"), str(path), args.estimator,
                      {k: c.to_dict() for k, c in cands.items()})
        settings.append((f"fit {b} bpw ({args.estimator})", plan.labels()))
    for u in () if args.fit_only else args.uniform:  # the calibrated one last: the slowest
        if u not in cands:
            cands[u] = parse_candidates(u, GROUPS[name])[u]
            lay = layout(open_checkpoint(path), cands)
        settings.append((f"uniform {u}", dict.fromkeys(lay.names, u)))
    for setting, labels in settings:
        t = time.perf_counter()
        ppl = _score(path, labels, cands, lay, tok, text, args, work)
        counts: dict[str, int] = {}
        for label in labels.values():
            counts[label] = counts.get(label, 0) + 1
        rows.append({"model": name, "setting": setting, "bpw": round(lay.bpw(labels), 4), "ppl": round(ppl, 3),
                     "mix": counts, "seconds": round(time.perf_counter() - t, 1),
                     "sensitivity_seconds": round(sens_seconds, 1)})
        print(rows[-1], flush=True)
        write_results(_name(f"fit-curve-{name}-{args.estimator}-partial", args), rows, describe_device(),
                      {"args": vars(args)})
    return rows


def _estimator(setting: str) -> str:
    """``fit 4.0 bpw (fisher)`` → fisher; rows of the first runs, without one, used ``output``."""
    return setting.rsplit("(", 1)[1].rstrip(")") if "(" in setting else "output"


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, name in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == name]
        fp32 = next(r["ppl"] for r in mine if r["setting"] == "fp32")
        mine = [r for r in mine if r["setting"] != "fp32"]
        for est, style in (("fisher", "o-"), ("output-fisher", "^-"), ("output", "s--")):
            fit = sorted((r for r in mine if r["setting"].startswith("fit") and _estimator(r["setting"]) == est),
                         key=lambda r: r["bpw"])
            if fit:
                ax.plot([r["bpw"] for r in fit], [r["ppl"] for r in fit], style, label=f"lowbit fit ({est})",
                        alpha=0.6 if est == "output" else 1.0)
        for i, u in enumerate(r for r in mine if r["setting"].startswith("uniform")):
            ax.scatter([u["bpw"]], [u["ppl"]], s=60, marker="sD^v"[i % 4], label=u["setting"], zorder=3)
        ax.axhline(fp32, color="grey", linestyle="--", linewidth=1, label=f"fp32 {fp32:.2f}")
        ax.set_yscale("log")
        ax.set_xlabel("bits per weight (quantized Linears, scales included)")
        ax.set_ylabel("perplexity, wiki.eval.txt")
        ax.set_title(f"{name} (g{GROUPS[name]})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma-3-270m"], choices=list(GROUPS))
    ap.add_argument("--budgets", nargs="*", type=float, default=[3.25, 3.5, 4.0, 4.5])
    ap.add_argument("--uniform", nargs="*", default=list(UNIFORM), help="uniform rows (default: int4 int3 gptq4)")
    ap.add_argument("--candidates", default=CANDIDATES)
    ap.add_argument("--estimator", default="fisher", choices=("fisher", "output-fisher", "output", "loss"))
    ap.add_argument("--fit-only", action="store_true", help="only the fit rows (the uniform ones measured before)")
    ap.add_argument("--samples", type=int, default=4, help="calibration windows for the sensitivities")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib-samples", type=int, default=16, help="GPTQ calibration windows of 512 tokens")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--work", default=None, help="folder for the sensitivity cache and quantized folders")
    ap.add_argument("--plot", default=None, help="PNG (default: benchmarks/results/fit-curve-<date>.png)")
    ap.add_argument("--label", default="", help="added to the results' file names (fit-curve-LABEL-<date>)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="only join the rows of earlier runs' JSON files into one JSON and one PNG")
    args = ap.parse_args()
    if args.merge:
        rows = [r for f in args.merge for r in json.loads(Path(f).read_text())["rows"]]
        print_table(rows, ["model", "setting", "bpw", "ppl"])
        path = write_results(_name("fit-curve", args), rows, describe_device(),
                             {"merged": [Path(f).name for f in args.merge]})
        plot(rows, Path(args.plot) if args.plot else RESULTS / (path.stem + ".png"))
        return
    torch.manual_seed(0)
    work = Path(args.work or tempfile.mkdtemp(prefix="fit-curve-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        rows += run_model(name, args, work)
    print_table(rows, ["model", "setting", "bpw", "ppl"])
    path = write_results(_name("fit-curve", args), rows, describe_device(), {"args": vars(args)})
    plot(rows, Path(args.plot) if args.plot else RESULTS / (path.stem + ".png"))


if __name__ == "__main__":
    main()
