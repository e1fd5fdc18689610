"""Kernel choice on the CPU by measurement: on first use of a (format, shape, compute dtype, CPU model, instruction
set), time every kernel that accepts the layer, with bf16 and fp32 activations, against the layer's original dense
fp32 product, and keep the fastest; never a path slower than that original (``cpu_dense`` holds the dequantized
weight then, and says so).

Each candidate runs on the layer's own tensors at M=1 (decode), called again and again (``time_hot``); candidates
are interleaved over rounds and the best median kept. Timing each call after flushing the last-level cache
(``time_cold``, kept for the benchmarks) measured the flush's aftermath rather than the kernel: on a 2-core AMD EPYC
every candidate took about 300 µs on a 0.4 MB layer that each runs in 55-115 µs hot, so noise chose, and it once
chose torch's int4 kernel, 2x slower than the dense layer in the decoding that followed. The choice and every candidate's time go to ``<cache>/cpu_kernels/<cpu model>-<isa>.json``, read back by the
next process on that CPU. ``$LOWBIT_CPU_TUNE=0`` turns measuring off (the static priorities of ``select`` choose:
deterministic, as the tests want); ``inspect`` shows each layer's reason with the measured times.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from lowbit.kernels.base import Kernel, get_kernel, kernels
from lowbit.kernels.cpu.features import cpu_info, isa
from lowbit.kernels.request import KernelRequest, kernel_request
from lowbit.utils import cache_dir

TUNE_ENV = "LOWBIT_CPU_TUNE"
DENSE = "cpu_dense"
ROUNDS, CALLS = 3, 5
CLOSE = 1.15  # a runner-up this close to the original layer is raced again before the dense copy is chosen
SLOW = 3.0  # a candidate this many times slower than the original layer at its first timing is not raced
_memory: dict[tuple[Path, str], dict] = {}  # this process's choices, by (cache file, key)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def enabled() -> bool:
    return os.environ.get(TUNE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cpu_slug() -> str:
    return re.sub(r"[^a-z0-9]+", "_", cpu_info()[0].lower()).strip("_") + f"-{isa()}"


def cache_path() -> Path:
    return cache_dir() / "cpu_kernels" / f"{cpu_slug()}.json"


def key(fmt, shape: tuple[int, int], dtypes: tuple[torch.dtype, ...]) -> str:
    """The cache key: format, shape, dtypes, torch, the kernels that would race (a new kernel measures again) and how
    they are timed (choices from the earlier cold timing are measured again)."""
    names = ",".join(str(d).removeprefix("torch.") for d in dtypes)
    racing = ",".join(sorted({label.split("/")[0] for label in candidates(fmt, shape, dtypes)}))
    return f"{fmt.key()}|{shape[0]}x{shape[1]}|{names}|torch {torch.__version__}|{racing}|hot"


@functools.lru_cache(maxsize=1)
def _flush_buffer() -> torch.Tensor:
    try:
        llc = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        size = int(llc.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(llc[-1], 0)
    except (OSError, ValueError):
        size = 32 << 20
    return torch.zeros(2 * size // 4)


def time_hot(fn: Callable[[], object]) -> float:
    """Median µs of ``fn()`` over ``CALLS`` calls in a row, after one untimed call."""
    fn()
    samples = []
    for _ in range(CALLS):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def time_cold(fn: Callable[[], object]) -> float:
    """Median µs of ``fn()`` over ``CALLS`` calls, the last-level cache flushed before each."""
    buf, samples = _flush_buffer(), []
    for _ in range(CALLS):
        buf.add_(1.0)
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def candidates(fmt, shape, dtypes) -> dict[str, tuple[Kernel, KernelRequest]]:
    """'kernel/dtype' → (kernel, request) for every kernel accepting the layer at one of ``dtypes`` on the CPU."""
    out = {}
    for dtype in dtypes:
        request = kernel_request(fmt, shape, "cpu", dtype)
        for kernel in kernels():
            if kernel.name != DENSE and kernel.accepts(request)[0]:
                out[f"{kernel.name}/{str(dtype).removeprefix('torch.')}"] = (kernel, request)
    return out


def measure(fmt, shape, dtypes, tensors: dict[str, torch.Tensor], timer=None) -> dict[str, float]:
    """Best µs per M=1 call of every candidate and of ``cpu_dense/float32`` (the original dense layer)."""
    runs = {}
    for label, (kernel, request) in {**candidates(fmt, shape, dtypes),
                                     f"{DENSE}/float32": (get_kernel(DENSE), kernel_request(fmt, shape, "cpu",
                                                                                            torch.float32))}.items():
        prepared = kernel.prepare(dict(tensors), request)
        x = torch.randn(1, shape[1]).to(request.compute_dtype)
        runs[label] = functools.partial(kernel.run, x, tensors, prepared, request, None)
    dense, timer = f"{DENSE}/float32", timer or time_hot
    with torch.inference_mode():
        for fn in runs.values():
            fn()  # first calls build libraries and caches
        first = {label: timer(fn) for label, fn in runs.items()}
        # far slower than the original layer at the first look: measured once, not raced
        times = {label: [t] for label, t in first.items()}
        racing = {label: fn for label, fn in runs.items() if first[label] <= SLOW * first[dense]}
        for _ in range(ROUNDS):
            for label, fn in racing.items():
                times[label].append(timer(fn))
        # the original won narrowly: a busy moment may have hit the runner-up, so the two race again before the
        # layer is given a dense copy
        best = sorted(racing, key=lambda label: min(times[label]))
        if len(best) > 1 and best[0] == dense and min(times[best[1]]) <= CLOSE * min(times[dense]):
            for _ in range(ROUNDS):
                for label in best[:2]:
                    times[label].append(timer(racing[label]))
    return {label: round(min(v), 1) for label, v in times.items()}


def decide(times: dict[str, float]) -> tuple[str, str]:
    """(winning 'kernel/dtype', reason) from measured times: the fastest, if faster than the original dense layer."""
    base = times[f"{DENSE}/float32"]
    label = min(times, key=times.get)
    listed = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
    if label.startswith(DENSE):
        why = f"no quantized kernel beat the original fp32 layer on this CPU ({listed} µs at M=1)"
    else:
        why = f"fastest at M=1 on this CPU, {base / times[label]:.2f}x the original fp32 layer ({listed} µs)"
    return label, f"measured: {why}"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def best(fmt, shape, dtypes, tensors: dict[str, torch.Tensor]) -> tuple[str, torch.dtype, str]:
    """(kernel name, compute dtype, reason): cached for this CPU, else measured now and cached."""
    path, k = cache_path(), key(fmt, shape, dtypes)
    entry = _memory.get((path, k)) or _load(path).get("choices", {}).get(k)
    if entry is None:
        times = measure(fmt, shape, dtypes, tensors)
        label, why = decide(times)
        entry = {"choice": label, "reason": why, "us": times,
                 "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        _store(path, k, entry)
    _memory[(path, k)] = entry
    name, dtype = entry["choice"].split("/")
    return name, DTYPES[dtype], entry["reason"]


def _store(path: Path, k: str, entry: dict) -> None:
    data = _load(path)
    flags = sorted(f for f in cpu_info()[1] if f.startswith(("avx", "amx", "fma")))
    data.setdefault("cpu", {"model": cpu_info()[0], "isa": isa(), "flags": flags})
    data.setdefault("choices", {})[k] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: the choice still holds for this process
