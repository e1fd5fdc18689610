"""Cost of the load-time range check of stored values (``WeightFormat.check`` through ``stream.check_stored``) on
Gemma-3-270M: the check alone on the loaded model, and whole loads with and without it, alternated in one run.

    PYTHONPATH=src python benchmarks/range_check.py [--methods int4 nf4 fp8 mxfp4] [--loads 3]

Writes ``results/range_check-<date>-<kind>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import describe_device, device_line, print_table, time_fn, write_results

import lowbit
from lowbit.loading import stream
from lowbit.realmodels import model_path


def _load_seconds(folder: Path, checked: bool) -> float:
    real = stream.check_stored
    if not checked:
        stream.check_stored = lambda model, own=True: None
    try:
        start = time.perf_counter()
        lowbit.from_pretrained(folder)
        return time.perf_counter() - start
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
            model = lowbit.from_pretrained(folder)
            alone = time_fn(lambda: stream.check_stored(model), warmup=1, runs=10)["median_us"] / 1e3
            on, off = [], []
            for _ in range(args.loads):
                off.append(_load_seconds(folder, checked=False))
                on.append(_load_seconds(folder, checked=True))
            load_ms = statistics.median(on) * 1e3
            rows.append({"method": method, "check_ms": round(alone, 2), "load_ms_checked": round(load_ms, 1),
                         "load_ms_unchecked": round(statistics.median(off) * 1e3, 1),
                         "check_share_of_load": round(alone / load_ms, 4)})
    print_table(rows, title="range check on Gemma-3-270M loads (median)")
    print(write_results("range_check", rows, device))


if __name__ == "__main__":
    main()
