"""Kernel choice on the CPU by measurement: on first use of a (format, shape, compute dtype, CPU model, instruction
set), time every kernel that accepts the layer, with bf16 and fp32 activations, against the layer's original dense
fp32 product, and keep the fastest; never a path slower than that original (``cpu_dense`` holds the dequantized
weight then, and says so).

Each candidate runs at M=1 (decode) over copies of the layer's tensors that together exceed the last-level cache,
a different copy each call (``Run``), so every call reads its weights from memory as decoding a model larger than the
cache does, and nothing else is timed; candidates are interleaved over rounds and the best median kept. A candidate's
copies (about twice the last-level cache) exist only while it is being timed, once per layer shape and CPU: the choice
is cached. Two other timings were tried and misled: flushing the cache before each call (``time_cold``, kept for the
benchmarks) measured the flush's aftermath on a 2-core AMD EPYC VM (about 300 µs for every candidate on a 0.4 MB
layer that each runs in 55-115 µs), and calling one copy again and again favoured the dense fp32 copy of small
layers, which then fit the cache as they do not in a model. The choice and every candidate's time go to
``<cache>/cpu_kernels/<cpu model>-<isa>.json``, read back by the next process on that CPU. ``$LOWBIT_CPU_TUNE=0``
turns measuring off (the static priorities of ``select`` choose: deterministic, as the tests want); ``inspect`` shows each layer's reason with the measured times.
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
from lowbit.kernels.cpu import native
from lowbit.kernels.cpu.features import cpu_info, isa
from lowbit.kernels.request import KernelRequest, kernel_request
from lowbit.utils import cache_dir

TUNE_ENV = "LOWBIT_CPU_TUNE"
DENSE = "cpu_dense"
ROUNDS, CALLS = 3, 5
MAX_COPIES = 256  # copies of a layer's tensors that a candidate cycles over while it is timed
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
    """The cache key: format, shape, dtypes, torch, the kernels that would race (a new kernel measures again), the
    build of lowbit's C kernels (so do changed ones) and how they are timed (choices timed another way before are
    measured again)."""
    names = ",".join(str(d).removeprefix("torch.") for d in dtypes)
    racing = ",".join(sorted({label.split("/")[0] for label in candidates(fmt, shape, dtypes)}))
    build = "none" if native.unavailable() else native.build_id(isa())
    return f"{fmt.key()}|{shape[0]}x{shape[1]}|{names}|torch {torch.__version__}|{racing}|C {build}|streamed"


@functools.lru_cache(maxsize=1)
def llc_bytes() -> int:
    """This CPU's last-level cache (32 MiB where sysfs does not say)."""
    try:
        llc = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(llc.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(llc[-1], 0)
    except (OSError, ValueError):
        return 32 << 20


@functools.lru_cache(maxsize=1)
def _flush_buffer() -> torch.Tensor:
    return torch.zeros(2 * llc_bytes() // 4)


def time_calls(fn: Callable[[], object]) -> float:
    """Median µs of ``fn()`` over ``CALLS`` calls in a row."""
    samples = []
    for _ in range(CALLS):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def _clone(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.clone() if isinstance(t, torch.Tensor) else t for name, t in tensors.items()}


class Run:
    """One candidate's M=1 call, each call on the next of several copies of the layer's tensors (together at least
    twice the last-level cache, at most ``MAX_COPIES``). The copies exist only inside ``with run:``, while that
    candidate is timed."""

    def __init__(self, label: str, kernel: Kernel, request: KernelRequest, tensors: dict[str, torch.Tensor]):
        self.label, self.kernel, self.request = label, kernel, request
        self.x = torch.randn(1, request.k).to(request.compute_dtype)
        prepared = kernel.prepare(dict(tensors), request)
        size = sum(t.nbytes for t in (*tensors.values(), *prepared.values()) if isinstance(t, torch.Tensor))
        self.copies = min(MAX_COPIES, max(1, -(-2 * llc_bytes() // max(size, 1))))
        self.sets = [(tensors, prepared)]
        self.turn = 0

    def __enter__(self) -> Run:
        tensors, prepared = self.sets[0]
        self.sets += [(_clone(tensors), _clone(prepared)) for _ in range(self.copies - 1)]
        return self

    def __exit__(self, *exc) -> None:
        del self.sets[1:]
        self.turn = 0

    def __call__(self):
        tensors, prepared = self.sets[self.turn]
        self.turn = (self.turn + 1) % len(self.sets)
        return self.kernel.run(self.x, tensors, prepared, self.request, None)


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


def _with_copies(timer: Callable[[Run], float]) -> Callable[[Run], float]:
    def timed(run: Run) -> float:
        with run:
            return timer(run)
    return timed


def measure(fmt, shape, dtypes, tensors: dict[str, torch.Tensor], timer=None) -> dict[str, float]:
    """Best µs per M=1 call of every candidate and of ``cpu_dense/float32`` (the original dense layer)."""
    chosen = {**candidates(fmt, shape, dtypes),
              f"{DENSE}/float32": (get_kernel(DENSE), kernel_request(fmt, shape, "cpu", torch.float32))}
    runs = {label: Run(label, kernel, request, tensors) for label, (kernel, request) in chosen.items()}
    dense, timer = f"{DENSE}/float32", _with_copies(timer or time_calls)
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
