"""Cost of the load-time range check of stored values (``WeightFormat.check`` through ``stream.check_stored``) on
Gemma-3-270M: the check timed where loading runs it (before the kernels are prepared), and whole loads with and
without it, alternated in one run.

    PYTHONPATH=src python benchmarks/range_check.py [--methods int4 nf4 fp8 mxfp4] [--loads 3]

Writes ``results/range_check-<date>-<kind>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import describe_device, device_line, loadavg, print_table, write_results

import lowbit
from lowbit.loading import stream
from lowbit.realmodels import model_path


def _load(folder: Path, checked: bool) -> tuple[float, float]:
    """(seconds of the whole load, seconds of the range check inside it: 0 when skipped)."""
    real, spent = stream.check_stored, []

    def timed(model, own=True):
        start = time.perf_counter()
        real(model, own)
        spent.append(time.perf_counter() - start)

    stream.check_stored = timed if checked else (lambda model, own=True: None)
    try:
        start = time.perf_counter()
        lowbit.from_pretrained(folder)
        return time.perf_counter() - start, sum(spent)
    finally:
        stream.check_stored = real


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=["int4", "nf4", "fp8", "mxfp4"])
    parser.add_argument("--loads", type=int, default=3, help="loads with and without the check, alternated")
    args = parser.parse_args()
    device = describe_device()
    print(device_line(device))
    src = model_path("gemma-3-270m")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            folder = lowbit.quantize_folder(src, Path(tmp) / method, method)
            on, off, check = [], [], []
            for _ in range(args.loads):  # alternated, so both see the same load of the machine
                off.append(_load(folder, checked=False)[0])
                seconds, inside = _load(folder, checked=True)
                on.append(seconds)
                check.append(inside)
            load_ms, check_ms = statistics.median(on) * 1e3, statistics.median(check) * 1e3
            rows.append({"method": method, "check_ms": round(check_ms, 1), "load_ms_checked": round(load_ms, 1),
                         "load_ms_unchecked": round(statistics.median(off) * 1e3, 1),
                         "check_share_of_load": round(check_ms / load_ms, 4), "contention_loadavg": loadavg()})
    print_table(rows, title="range check inside Gemma-3-270M loads (median; the check timed where loading runs it)")
    print(write_results("range_check", rows, device))


if __name__ == "__main__":
    main()
