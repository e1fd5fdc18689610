"""int4 at large M (prefill): the fused GEMM against the weight dequantized to bf16 + cuBLAS, per layer and in a
model's prompt forward.

1. ``layers``: for the Llama-3-8B shapes (and the fused q/k/v and gate/up of the decode path), int4 g128 with bf16
   x at M = 64 ... 4096: ``F.linear`` in bf16; lowbit's fused GEMM at the config cached for that M bucket
   (``tuned_<gpu>.json``; the heuristic default where none is); lowbit's ``dequant`` path (``dequant.py``); each
   result checked against the reference op. Times are ``ops.bench_gpu``'s (CUDA-graph replays, L2 flushed).
   The configs the tuner would now keep (``dequant`` where it is faster than the cached one at the bucket's
   M) are written beside the results (``proposed_configs``).
2. ``model``: the 8B-shaped Llama of decode.py (random weights, 32 layers), a batch of one prompt of P tokens:
   the eager prompt forward ``model(ids)`` (what ``generate`` runs before its first token) in bf16 and in int4 g128:
   as the library runs it (cached configs, ``dequant`` from ``tune.DEQUANT_ALWAYS_M``), with the cached configs
   alone, and with every int4 key of the prompt's bucket set to ``dequant``, in one process. The first prompt of a
   process ran slower in one run (bf16 at 512 tokens: 35.7 ms first, 20.7 ms later), so give a throwaway first.
3. ``host``: the host time of one eager call of a 4096 x 4096 int4 layer at M = 256 ... 1024 (``host_rows``): a
   prompt of a few hundred tokens is host-bound in eager mode, so what a call costs the host decides there.

    PYTHONPATH=src python benchmarks/prefill.py --out DIR [--ms 64 256 1024] [--prompts 512 2048] [--tune 64 128]
        [--profile 512]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lowbit  # noqa: E402
from decode import llama_8b  # noqa: E402
from gpu_linear import device_info, quant_linear, ref_out, rel_err  # noqa: E402

SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672), (4096, 6144), (4096, 28672), (4096, 1024))
MS = (64, 128, 256, 512, 1024, 2048, 4096)
DEQUANT = {"path": "dequant"}


def layer_rows(ms, tune_ms=()) -> tuple[list[dict], dict]:
    from lowbit.kernels.triton import ops, tune

    rows, proposed = [], {}
    for k, n in SHAPES:
        torch.manual_seed(0)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        ql = quant_linear(w, "int4", {"group_size": 128})
        wt, s, z = ql.kernel.tensors(ql._buffers, ql._prepared)
        tf = ql.kernel.triton_format(ql.request)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            key = tune.key(tf, torch.bfloat16, m, k, n)
            if m in tune_ms and m == tune.bucket(m):  # the tuner's own choice, every candidate timed, kept in the cache
                tune.tune(tf, torch.bfloat16, m, k, n, ops._measure(x, wt, s, z, None, tf))
            cached = tune.cache().get(key) or tune.default(tf, torch.bfloat16, m, k, n)
            ref = ref_out(ql, x)
            row = {"K": k, "N": n, "M": m, "bucket": tune.bucket(m), "cached": tune.short(cached),
                   "bf16_us": ops.bench_gpu(lambda: F.linear(x, w))}
            for name, cfg in (("fused", cached), ("dequant", DEQUANT)):
                row[f"{name}_us"] = ops.bench_gpu(lambda cfg=cfg: ops.run(x, wt, s, z, None, tf, cfg))
                row[f"{name}_err"] = rel_err(ops.run(x, wt, s, z, None, tf, cfg), ref)
                row[f"{name}_vs_bf16"] = round(row["bf16_us"] / row[f"{name}_us"], 3)
            rows.append(row)
            print({k2: (round(v, 2) if isinstance(v, float) else v) for k2, v in row.items()}, flush=True)
            if m == tune.bucket(m) and row["dequant_us"] < row["fused_us"]:
                proposed[key] = DEQUANT
            del x, ref
        del ql, w
        torch.cuda.empty_cache()
    return rows, proposed


@torch.inference_mode()
def host_rows(ms=(256, 512, 1024)) -> list[dict]:
    """Host µs per eager call of a 4096 x 4096 layer (200 calls queued, then the GPU waited for): bf16; int4 with
    the fused GEMM (the config cached for the bucket); int4 dequantized + cuBLAS as an eager call runs it (the
    compiled kernel launched directly, one shared buffer); and through Triton's JIT launch every call."""
    from generate import host_us

    from lowbit.kernels.triton import launcher, tune

    torch.manual_seed(0)
    lin = torch.nn.Linear(4096, 4096, bias=False, device="cuda", dtype=torch.bfloat16)
    seq = torch.nn.Sequential(copy.deepcopy(lin))
    lowbit.quantize_(seq, lowbit.config("int4", group_size=128))
    ql = seq[0]
    wt, s, z = ql.kernel.tensors(ql._buffers, ql._prepared)
    tf = ql.kernel.triton_format(ql.request)
    rows, rule = [], tune.DEQUANT_ALWAYS_M
    for m in ms:
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        key = tune.key(tf, torch.bfloat16, m, 4096, 4096)
        saved = tune.cache().get(key)
        row = {"layer": "4096x4096", "M": m, "bf16_host_us": min(host_us(lambda: lin(x)) for _ in range(3))[0]}
        tune.DEQUANT_ALWAYS_M = 1 << 62
        for name, cfg in (("int4_fused", saved), ("int4_dequant", DEQUANT)):
            if cfg is not None:
                tune.cache()[key] = cfg
            launcher._BOUND.clear()
            row[f"{name}_host_us"] = min(host_us(lambda: ql(x)) for _ in range(3))[0]
        row["int4_dequant_jit_host_us"] = min(host_us(lambda: launcher.launch(x, wt, s, z, None, tf, DEQUANT))
                                              for _ in range(3))[0]
        tune.DEQUANT_ALWAYS_M = rule
        if saved is None:
            tune.cache().pop(key, None)
        else:
            tune.cache()[key] = saved
        launcher._BOUND.clear()
        rows.append({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
        print(rows[-1], flush=True)
    return rows


def prompt_ms(model, ids, reps: int = 5) -> float:
    """Median ms of the eager prompt forward (no cache kept)."""
    times = []
    with torch.no_grad():
        for i in range(reps + 1):
            torch.cuda.synchronize()
            t = time.perf_counter()
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            torch.cuda.synchronize()
            if i:  # the first call tunes nothing (LOWBIT_TUNE unset) but compiles the kernels
                times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def model_rows(prompts, layers: int, profile: int | None = None) -> list[dict]:
    from lowbit.kernels.triton import launcher, tune

    model = llama_8b(layers)
    quant = lowbit.quantize_(copy.deepcopy(model), lowbit.config("int4", group_size=128))
    rows = []
    for p in prompts:
        ids = torch.randint(0, 128256, (1, p), device="cuda")
        row = {"prompt": p, "layers": layers, "bf16_ms": prompt_ms(model, ids)}
        row["int4_default_ms"] = prompt_ms(quant, ids)  # what a user runs: the cached configs and the M rule
        rule, tune.DEQUANT_ALWAYS_M = tune.DEQUANT_ALWAYS_M, 1 << 62
        launcher._BOUND.clear()
        row["int4_cached_ms"] = prompt_ms(quant, ids)  # the cached (fused GEMM) configs alone
        tune.DEQUANT_ALWAYS_M = rule
        saved = dict(tune.cache())
        for k, n in ((4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)):  # q/o, k/v, gate/up, down
            tune.cache()[tune.key(quant_tf(quant), torch.bfloat16, p, k, n)] = DEQUANT
        launcher._BOUND.clear()  # the eager fast path keeps each shape's first launch: start again
        row["int4_dequant_ms"] = prompt_ms(quant, ids)
        tune.cache().clear()
        tune.cache().update(saved)
        launcher._BOUND.clear()
        for name in ("int4_default", "int4_cached", "int4_dequant"):
            row[f"{name}_vs_bf16"] = round(row["bf16_ms"] / row[f"{name}_ms"], 3)
        rows.append(row)
        print(row, flush=True)
    if profile:
        ids = torch.randint(0, 128256, (1, profile), device="cuda")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof, torch.no_grad():
            for _ in range(3):
                quant(input_ids=ids, use_cache=False, logits_to_keep=1)
            torch.cuda.synchronize()
        print(f"profile of 3 int4 prompts of {profile} tokens:")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=50))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=50))
    return rows


def quant_tf(model):
    from lowbit.nn import QuantLinear

    ql = next(m for m in model.modules() if isinstance(m, QuantLinear))
    return ql.kernel.triton_format(ql.request)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ms", type=int, nargs="+", default=list(MS))
    ap.add_argument("--prompts", type=int, nargs="*", default=[512, 2048])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tune", type=int, nargs="*", default=[], metavar="M",
                    help="M buckets to tune first (below tune.DEQUANT_ALWAYS_M); the cache is written to --out")
    ap.add_argument("--profile", type=int, metavar="P",
                    help="also print torch.profiler's tables of a P-token int4 prompt")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"date": datetime.date.today().isoformat(), "script": "benchmarks/prefill.py", "device": device_info()}
    path = args.out / f"prefill-{datetime.date.today().isoformat()}.json"
    info["layers"], info["proposed_configs"] = layer_rows(args.ms, set(args.tune))
    path.write_text(json.dumps(info, indent=1))
    info["host"] = host_rows()
    path.write_text(json.dumps(info, indent=1))
    if args.tune:
        from lowbit.kernels.triton import tune

        print("tuned cache:", tune.save(args.out / tune.cache_path().name))
    if args.prompts:
        info["model"] = model_rows(args.prompts, args.layers, args.profile)
        path.write_text(json.dumps(info, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
