"""``lowbit fit SRC OUT --budget 4.25bpw|2.1GB``: one method per layer from measured sensitivity, within a budget."""

from __future__ import annotations

import time
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("src", help="full-precision checkpoint folder")
    p.add_argument("out", help="output folder")
    p.add_argument("--budget", required=True,
                   help="bits per weight of the quantized Linears (4.25bpw) or the output's size (2.1GB, 500MB)")
    p.add_argument("--candidates", default="int8,int4,int3",
                   help="comma-separated methods or aliases to choose from per layer; an integer method takes its "
                        "bits and group as a suffix (hqq4, int4g128), + turns a setting on (gptq3+act_order+mse) "
                        "(default: int8,int4,int3)")
    p.add_argument("--group-size", type=int, default=None, help="group (block) size of every grouped candidate")
    p.add_argument("--calib", default=None, metavar="FILE",
                   help="calibration text, UTF-8 (default: the bundled wiki.calib.txt, as for lowbit quantize)")
    p.add_argument("--estimator", choices=("auto", "fisher", "output-fisher", "output", "loss"), default="auto",
                   help="sensitivity: loss increase predicted from squared loss gradients at the weights (fisher) "
                        "or at the layer's output (output-fisher), the layer's output error, or the measured loss "
                        "increase with only that layer quantized (slow); auto (default): output-fisher with a "
                        "calibrated candidate, else fisher")
    p.add_argument("--samples", type=int, default=4, help="calibration windows for the sensitivities (default 4)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--calib-samples", type=int, default=128, help="windows for calibrated candidates (default 128)")
    p.add_argument("--plot", metavar="PLAN.png", default=None, help="bits and sensitivity per layer (needs matplotlib)")
    p.add_argument("--plan-only", action="store_true", help="print the plan, write no model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from lowbit.errors import SaveError
    from lowbit.eval.report import require_matplotlib
    from lowbit.fitting.run import fit

    if args.plot:
        require_matplotlib()  # before minutes of work, not after
        if not Path(args.plot).parent.is_dir():
            raise SaveError(f"output {args.plot!r} is in a folder that does not exist; expected an existing folder; "
                            "create it first")
    start = time.perf_counter()
    console = Console(width=200)
    res = fit(args.src, None if args.plan_only else args.out, args.budget, args.candidates, calib=args.calib,
              group_size=args.group_size, estimator=args.estimator, samples=args.samples, seq_len=args.seq_len,
              calib_samples=args.calib_samples, overwrite=args.overwrite, progress=True,
              log=lambda line: console.print(line, highlight=False, soft_wrap=True))
    plan = res.plan
    if plan is not None:
        labels = list(plan.candidates)
        table = Table(title=f"{Path(args.src).name}: one candidate per layer, {plan.estimator} sensitivity")
        for col in ("layer", "choice", "bits/w", *labels):
            table.add_column(col, justify="left" if col in ("layer", "choice") else "right")
        for x in plan.layers:
            cells = [f"[bold]{x.sensitivity[label]:.3g}[/bold]" if label == x.label else f"{x.sensitivity[label]:.3g}"
                     for label in labels]
            table.add_row(x.name, x.label, f"{x.bits_per_weight:.3f}", *cells)
        console.print(table)
        console.print(f"budget {plan.budget}: achieved {plan.budget_achieved} ({plan.bpw:.4f} bits per quantized "
                      f"weight, {plan.total_bytes / 1e6:.1f} MB predicted)", highlight=False)
        if args.plot:
            from lowbit.fitting.plot import plot_plan

            plot_plan(plan, args.plot)
    if res.folder is not None:
        size = sum(p.stat().st_size for p in res.folder.glob("*.safetensors"))
        console.print(f"wrote {res.folder}: {size / 1e6:.1f} MB of weights", highlight=False)
    print(f"done in {time.perf_counter() - start:.1f} s" + (f"; wrote {args.plot}" if args.plot and plan else ""))
    return 0
