"""Start-up time of the command line: ``lowbit --help``, ``lowbit methods`` and a usage error, each in a fresh
process, against a budget (1 s by default), beside a bare ``python -c pass`` measured in the same run.

    PYTHONPATH=src python benchmarks/cli_startup.py [--runs 5] [--budget 1.0] [--compare REV]

``--compare REV`` also times the same commands on the ``src`` of git revision REV (extracted with ``git archive``
into a temporary folder), in the same run, alternating with this tree. Writes
``results/cli_startup-<date>-<kind>.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common import describe_device, device_line, print_table, write_results

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "lowbit --help": [sys.executable, "-m", "lowbit", "--help"],
    "lowbit methods": [sys.executable, "-m", "lowbit", "methods"],
    "lowbit quantize a b --method in4 (usage error)": [sys.executable, "-m", "lowbit", "quantize", "a", "b",
                                                       "--method", "in4"],
}


def _env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    return env


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - start


def _extract(rev: str, into: Path) -> Path:
    archive = into / "src.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds a start-up may take")
    ap.add_argument("--compare", metavar="REV", default=None, help="also time the src of this git revision")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cli_startup-"))
    try:
        trees = {"this tree": ROOT / "src"}
        if args.compare:
            trees[args.compare] = _extract(args.compare, tmp)
        times: dict[tuple[str, str], list[float]] = {(t, c): [] for t in trees for c in CASES}
        for tree, src in trees.items():  # warm the file cache and the bytecode of each tree once
            for cmd in CASES.values():
                _wall(cmd, _env(src))
        for _ in range(args.runs):  # alternate the trees so that a busy moment hits both
            for tree, src in trees.items():
                for case, cmd in CASES.items():
                    times[(tree, case)].append(_wall(cmd, _env(src)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for (tree, case), samples in times.items():
        median = statistics.median(samples)
        gated = case != "python -c pass"
        rows.append({"tree": tree, "command": case, "median_s": round(median, 3), "min_s": round(min(samples), 3),
                     "max_s": round(max(samples), 3), "runs": len(samples),
                     "budget_s": args.budget if gated else None,
                     "within_budget": (median <= args.budget) if gated else None})
    device = describe_device()
    print(device_line(device))
    print_table(rows, title=f"CLI start-up, wall time of a fresh process (budget {args.budget} s)")
    path = write_results("cli_startup", rows, device)
    print(f"wrote {path}")
    missed = [r for r in rows if r["tree"] == "this tree" and r["within_budget"] is False]
    if missed:
        print("over budget: " + ", ".join(f"{r['command']} ({r['median_s']} s)" for r in missed))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
