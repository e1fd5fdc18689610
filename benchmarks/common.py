"""Shared helpers of the benchmark scripts: timing, device description, JSON results, tables.

Every script prints a table and writes ``benchmarks/results/<name>-<YYYY-MM-DD>-<host>.json`` holding
``{"date", "device", "torch", "rows": [...]}`` so that runs on different days and machines can be compared.
Timings are only compared as ratios against a baseline measured in the same run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

RESULTS = Path(__file__).resolve().parent / "results"
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


# ---- timing -------------------------------------------------------------------------------------
def time_fn(fn: Callable[[], Any], *, warmup: int = 3, runs: int | None = None, budget_s: float = 0.4,
            min_runs: int = 5, max_runs: int = 200) -> dict[str, float]:
    """Median wall time of ``fn()`` in microseconds, under ``torch.inference_mode``.

    ``warmup`` calls are discarded. Without ``runs``, the number of timed calls is chosen so that they
    take about ``budget_s`` (clamped to [min_runs, max_runs]), estimated from the first warmup call;
    a call slower than ``budget_s`` gets one warmup and 3 timed runs (it is far off any target anyway).
    """
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn()
        per_call = time.perf_counter() - t0
        slow = runs is None and per_call > budget_s
        for _ in range(0 if slow else warmup - 1):
            fn()
        if runs is None:
            runs = 3 if slow else int(min(max(budget_s / max(per_call, 1e-9), min_runs), max_runs))
        samples = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
    samples_us = sorted(s * 1e6 for s in samples)
    return {"median_us": statistics.median(samples_us), "min_us": samples_us[0],
            "p90_us": samples_us[min(len(samples_us) - 1, int(0.9 * len(samples_us)))], "runs": runs}


class Contention:
    """How busy the rest of the machine was while a measurement ran: CPU cores' worth of time used by
    other processes (from /proc/stat minus this process's own time). Timings taken while other work
    competes for the cores are slow and noisy; the scripts record this next to every row.
    """

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        hz = os.sysconf("SC_CLK_TCK")
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
            busy = (sum(fields) - fields[3] - fields[4]) / hz  # all but idle and iowait
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system

    def start(self) -> None:
        self._t0 = self._read()

    def others_cores(self) -> float:
        """Average number of cores' worth of CPU time other processes used since ``start``."""
        t1 = self._read()
        wall = t1[0] - self._t0[0]
        if wall <= 0:
            return 0.0
        return round(max(0.0, ((t1[1] - self._t0[1]) - (t1[2] - self._t0[2])) / wall), 2)


def loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError):
        return None


# ---- device ---------------------------------------------------------------------------------------
def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, flags


def host_kind() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_device() -> dict[str, Any]:
    """CPU model, cores, thread count, the bf16/AMX flags that decide lowbit's CPU defaults, torch version."""
    name, flags = _cpuinfo()
    hypervisor = "hypervisor" in flags
    out: dict[str, Any] = {
        "kind": host_kind(),
        "cpu": name + (" (virtualized)" if hypervisor else ""),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "flags": {f: f in flags for f in CPU_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gib": _mem_total_gib(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def device_line(device: dict[str, Any]) -> str:
    wanted = [f for f, on in device["flags"].items() if on and (f.startswith("amx") or "bf16" in f)]
    flags = ",".join(wanted) or "no bf16 units"
    return (f"{device['cpu']}, {device['cores']} cores, {device['threads']} threads, {flags}; "
            f"torch {torch.__version__} ({device['torch_cpu_capability']})")


# ---- results -------------------------------------------------------------------------------------
def write_results(name: str, rows: list[dict[str, Any]], device: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None, results_dir: Path | str | None = None,
                  kind: str | None = None) -> Path:
    """Write ``<results_dir>/<name>-<date>-<kind>.json`` (kind: the device's, e.g. ``cpu``); returns its path."""
    date = datetime.date.today().isoformat()
    device = dict(device or describe_device())
    if kind:
        device["kind"] = kind
    results_dir = Path(results_dir) if results_dir else RESULTS
    payload: dict[str, Any] = {"date": date, "device": device, "torch": torch.__version__, "rows": rows}
    try:
        import transformers

        payload["transformers"] = transformers.__version__
    except ImportError:
        pass
    if extra:
        payload.update(extra)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_path(name, device.get("kind", host_kind()), results_dir)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def results_path(name: str, kind: str, results_dir: Path | str | None = None) -> Path:
    """Today's result file of ``name`` for ``kind`` (it may not exist yet)."""
    date = datetime.date.today().isoformat()
    return Path(results_dir or RESULTS) / f"{name}-{date}-{kind}.json"


# ---- tables ----------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return "" if value is None else str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None,
                headers: dict[str, str] | None = None) -> None:
    """Print ``rows`` as a table (rich if installed, else plain aligned text)."""
    if not rows:
        return
    columns = list(columns or rows[0].keys())
    headers = headers or {}
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    names = [headers.get(c, c) for c in columns]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    if Console is not None:
        table = Table(title=title)
        for name in names:
            table.add_column(name, justify="right")
        for row in cells:
            table.add_row(*row)
        Console(width=max(120, sum(len(n) + 3 for n in names))).print(table)
        return
    widths = [max(len(n), *(len(row[i]) for row in cells)) for i, n in enumerate(names)]
    if title:
        print(title)
    print("  ".join(n.rjust(w) for n, w in zip(names, widths)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


# ---- export checks (gguf_export.py, bnb_export.py): a real model, the bundled text, one prompt ------------------
def export_check_args(description: str, max_tokens: int):
    """The command line the export checks share: model, perplexity tokens and window, threads, greedy tokens."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=24, help="greedy tokens to compare")
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args()


def export_check_inputs(model: str, threads: int, prompt: str):
    """(folder of the real model, its tokenizer, wiki.eval.txt, the prompt's token ids), torch on ``threads``."""
    from transformers import AutoTokenizer

    from lowbit import realmodels
    from lowbit.data import text_path

    torch.set_num_threads(threads)
    path = realmodels.model_path(model)
    tok = AutoTokenizer.from_pretrained(path)
    return path, tok, text_path("wiki.eval.txt").read_text(encoding="utf-8"), \
        tok(prompt, add_special_tokens=False).input_ids
