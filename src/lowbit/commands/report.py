"""``lowbit report PATH --method NAME``: per layer weight SQNR, output error, bits/weight; perplexity before/after."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lowbit.commands.method_args import add_method_args, config_from_args


def add_arguments(r) -> None:
    r.add_argument("path", help="full-precision checkpoint folder")
    add_method_args(r)
    r.add_argument("--samples", type=int, default=4, help="calibration windows from the calibration text")
    r.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window")
    r.add_argument("--eval-tokens", type=int, default=8192, help="tokens of the eval text for perplexity; 0 skips it")
    r.add_argument("--ctx", type=int, default=512, help="perplexity window")
    r.add_argument("--calib", default=None, help="calibration text (default: the bundled wiki.calib.txt)")
    r.add_argument("--text", default=None, help="eval text (default: the bundled wiki.eval.txt)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--json", metavar="OUT", default=None, help="write the whole report as JSON")
    r.add_argument("--plot", metavar="OUT.png", default=None, help="bar chart per layer (needs matplotlib)")


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from lowbit.data import text_path
    from lowbit.errors import SaveError
    from lowbit.eval import layer_report, load_text, plot_report
    from lowbit.eval.report import require_matplotlib

    cfg = config_from_args(args)
    if args.plot:
        require_matplotlib()  # before minutes of work, not after
    for out in filter(None, (args.json, args.plot)):
        if not Path(out).parent.is_dir():
            raise SaveError(f"output {out!r} is in a folder that does not exist; expected an existing folder; "
                            "create it first")
    calib = load_text(args.calib or text_path("wiki.calib.txt"))
    text = load_text(args.text or text_path("wiki.eval.txt")) if args.eval_tokens else None
    start = time.perf_counter()
    report = layer_report(args.path, cfg, calib_text=calib, eval_text=text, samples=args.samples,
                          seq_len=args.seq_len, eval_tokens=args.eval_tokens, ctx=args.ctx, device=args.device,
                          progress=True)
    table = Table(title=f"{Path(report.model).name}: {report.config['method']}, output error on {report.rows} "
                        "token rows per layer")
    for col in ("layer", "format", "bits/w", "SQNR dB", "rel. output error"):
        table.add_column(col, justify="left" if col in ("layer", "format") else "right")
    for x in report.layers:
        table.add_row(x.name, x.format, f"{x.bits_per_weight:.3f}", f"{x.sqnr_db:.2f}", f"{x.output_error:.4f}")
    console = Console(width=200)
    console.print(table)
    console.print(report.summary(), highlight=False, soft_wrap=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    if args.plot:
        plot_report(report, args.plot)
    print(f"done in {time.perf_counter() - start:.1f} s" + "".join(f"; wrote {p}" for p in (args.json, args.plot) if p))
    return 0
