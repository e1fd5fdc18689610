"""Every lowbit format's M=1 layer against its own original fp32 ``nn.Linear``, on this CPU, with the kernel that
lowbit chooses by itself (the CPU tuner, measuring on the spot into a fresh cache), both on this CPU's full
instruction set and with the AVX2 code paths forced (``ATEN_CPU_CAPABILITY=avx2 LOWBIT_CPU_ISA=avx2``: what a CPU
without AVX-512/bf16 units runs). Target: every format's layer at least as fast as its fp32 original (ratio ≥ 1).

Each (format, shape) times the original ``nn.Linear`` module and the ``QuantLinear`` alternately over ``--rounds``:
"streamed" (each call on the next of several copies of the layer that together exceed the last-level cache: the
weights come from memory, as in decoding a model larger than the cache), "cold" (the cache flushed before each call;
on a VM this also timed the flush's aftermath, about 300 µs for any small layer) and "hot" (the same layer called
again and again); the ratios are original / quantized from the same rounds. One subprocess per
instruction set (``ATEN_CPU_CAPABILITY`` is read when torch loads).

    PYTHONPATH=src python benchmarks/cpu_layers.py [--threads 1] [--rounds 5] [--isa native avx2]
    PYTHONPATH=src python benchmarks/cpu_layers.py --m 512 --modes hot --rounds 3 --calls 3   # prefill layers
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = ((576, 1536), (1536, 576), (640, 2048), (2048, 2048))  # (K, N): SmolLM2 MLP down/up, Gemma MLP up, 2k square
FORMATS = {  # label → (method, config fields)
    "int8": ("int8", {}),
    "int8 g128 asym": ("rtn", {"bits": 8, "group_size": 128, "symmetric": False}),
    "int4 g64 asym": ("int4", {"group_size": 64}),
    "int4 g128 asym": ("int4", {"group_size": 128}),
    "int4 g64 sym": ("int4", {"group_size": 64, "symmetric": True}),
    "hqq 4-bit g64 (float zero)": ("hqq", {"bits": 4, "group_size": 64, "iters": 2}),
    "nf4 b64": ("nf4", {}),
    "nf4 b64 double quant": ("nf4", {"double_quant": True}),
    "fp4 b64": ("fp4", {}),
    "mxfp4": ("mxfp4", {}),
    "fp8 e4m3": ("fp8", {}),
    "int3 g64": ("int3", {"group_size": 64}),
    "int2 g64": ("int2", {"group_size": 64}),
}


MODES = ("streamed", "cold", "hot")


class Stream:
    """Calls of ``module(x)``, each on the next of several deep copies of the module that together exceed twice the
    last-level cache: the weights come from memory, as in decoding a model larger than the cache."""

    def __init__(self, module, x):
        from lowbit.kernels.cpu import tune

        size = sum(t.nbytes for t in (*module.buffers(), *module.parameters(),
                                      *getattr(module, "_prepared", {}).values()) if t is not None)
        copies = min(256, max(1, -(-2 * tune.llc_bytes() // max(size, 1))))
        self.modules, self.x, self.turn = [module] + [copy.deepcopy(module) for _ in range(copies - 1)], x, 0

    def __call__(self):
        module = self.modules[self.turn]
        self.turn = (self.turn + 1) % len(self.modules)
        return module(self.x)


def worker(args) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    sys.path.insert(0, str(HERE))
    import lowbit
    from common import describe_device
    from lowbit.kernels.cpu import features, tune

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    flush = tune._flush_buffer()
    rows = []
    for k, n in SHAPES:
        w = torch.randn(n, k) / k**0.5
        x = torch.randn(args.m, k)
        for label, (method, fields) in FORMATS.items():
            holder = nn.Sequential(nn.Linear(k, n, bias=False))
            with torch.no_grad():
                holder[0].weight.copy_(w)
            t0 = time.perf_counter()
            lowbit.quantize_(holder, lowbit.config(method, **fields))
            q = holder[0]
            setup = time.perf_counter() - t0
            orig = nn.Linear(k, n, bias=False)
            with torch.no_grad():
                orig.weight.copy_(w)
            fns = {"orig": lambda: orig(x), "quant": lambda: q(x)}
            streams = {"orig": Stream(orig, x), "quant": Stream(q, x)}
            times = {(name, mode): [] for name in fns for mode in args.modes}
            with torch.inference_mode():
                for fn in fns.values():
                    fn()
                for _ in range(args.rounds):
                    for name, fn in fns.items():
                        for mode in args.modes:
                            samples = []
                            for _ in range(args.calls):
                                if mode == "cold":
                                    flush.add_(1.0)
                                t = time.perf_counter()
                                streams[name]() if mode == "streamed" else fn()
                                samples.append(time.perf_counter() - t)
                            times[name, mode].append(statistics.median(samples) * 1e6)
                ref = F.linear(x, q.fmt.decode(q.canonical_tensors()))
                rel = float((q(x) - ref).norm() / ref.norm())
            row = {"format": label, "K": k, "N": n, "kernel": q.kernel.name,
                   "compute": str(q.compute_dtype).removeprefix("torch."), "isa": features.isa(),
                   "setup_s": round(setup, 2), "rel_err_vs_its_dequantized_weight": rel, "reason": q.kernel_reason}
            for mode in args.modes:
                o, qq = min(times["orig", mode]), min(times["quant", mode])
                row[f"orig_{mode}_us"], row[f"quant_{mode}_us"] = round(o, 1), round(qq, 1)
                row[f"ratio_{mode}"] = round(o / qq, 3)
            rows.append(row)
            ratios = "  ".join(f"{mode} x{row[f'ratio_{mode}']:.2f}" for mode in args.modes)
            print(f"  [{features.isa()}] M={args.m} {k}->{n} {label:28s} {row['kernel']:10s} {row['compute']:8s} "
                  f"{ratios}", file=sys.stderr, flush=True)
    print(json.dumps({"device": describe_device(), "rows": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=7, help="calls per variant, mode and round (median kept)")
    parser.add_argument("--isa", nargs="+", default=["native", "avx2"])
    parser.add_argument("--m", type=int, default=1, help="rows of activations (1: decode; 512: a prefill window)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--name", default="cpu_layers", help="results file name (before the date)")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(HERE))
    from common import loadavg, write_results

    rows, device, start = [], None, time.perf_counter()
    for isa in args.isa:
        env = dict(os.environ, LOWBIT_CPU_TUNE="1", LOWBIT_CACHE=tempfile.mkdtemp(prefix="lowbit-bench-"))
        env.pop("LOWBIT_KERNEL", None)
        if isa == "avx2":
            env.update(ATEN_CPU_CAPABILITY="avx2", LOWBIT_CPU_ISA="avx2")
        load = loadavg()
        done = subprocess.run([sys.executable, __file__, "--worker", "--threads", str(args.threads), "--rounds",
                               str(args.rounds), "--calls", str(args.calls), "--m", str(args.m), "--modes",
                               *args.modes], env=env, stdout=subprocess.PIPE, text=True, check=True)
        out = json.loads(done.stdout.strip().splitlines()[-1])
        device = out["device"]
        for row in out["rows"]:
            row.update(mode=isa, loadavg_start=load)
        rows += out["rows"]
    summary = {}
    for isa in args.isa:
        mine = [r for r in rows if r["mode"] == isa]
        for mode in args.modes:
            worst = min(mine, key=lambda r: r[f"ratio_{mode}"])
            summary[f"{isa}_{mode}"] = {"min_ratio": worst[f"ratio_{mode}"], "at": f"{worst['format']} "
                                        f"{worst['K']}->{worst['N']}", "all_at_least_1": all(
                                            r[f"ratio_{mode}"] >= 1.0 for r in mine)}
    print(json.dumps(summary, indent=1))
    if not args.no_write:
        path = write_results(args.name, rows, device, extra={"threads": args.threads, "rounds": args.rounds,
                                                                "m": args.m, "summary": summary,
                                                                "elapsed_s": round(time.perf_counter() - start)})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
