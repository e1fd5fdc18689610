"""The int4 g128 GEMV at M=1 against the bandwidth limit: gemv4's configs swept, beside what bounds them.

For each Llama-3-8B shape (K, N), in one process on one GPU:

- ``copy``: a device-to-device copy of a bf16 tensor of the weight's size (bytes read + written; gpu_linear.py's
  ceiling) and of a byte tensor of the int4 weight's size (``copy_small``);
- ``read_floor``: the fastest of a few Triton kernels that only read the packed int4 words (an xor-sum per program):
  what a kernel moving these bytes once costs with this timing method;
- ``bf16`` (``F.linear``), ``torch_int4`` (``aten._weight_int4pack_mm``), GemLite's A16W4 (where ``gemlite``
  imports; its shipped H100 configs), lowbit's layer at its cached config (``lowbit_now``);
- every gemv4 config of ``CONFIGS`` (both decodes, register prefetch or not, evict_first weights), the eight best
  timed again; the best with its error against the reference op.

Times are ``ops.bench_gpu``'s (CUDA-graph replays, the L2 flushed by writing 256 MB before each). For the three
large shapes the best config, copy, floor, torch int4 and lowbit_now are timed again with the L2 flushed by
reading 256 MB instead (``read_flush``): the write flush leaves up to 50 MB of dirty lines that the next kernel's
reads must first write back, which a decode step (previous layers read weights) mostly does not have
(``ops.bench_gpu(read_flush=True)``).

    PYTHONPATH=src python benchmarks/gemv4_sweep.py --out DIR [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gpu_linear import device_info, quant_linear, ref_out, rel_err  # noqa: E402

SHAPES = [(4096, 14336), (14336, 4096), (8192, 28672)]  # the three
DECODE = [(4096, 6144), (4096, 4096), (4096, 28672)]  # the fused q/k/v, o and gate/up of the decode path
CONFIGS = [dict(DEC=d, EV=1, PD=pd, BN=bn, num_warps=w, num_stages=st, SPLIT=sp)
           for d, pd, bn, w, st, sp in itertools.product((0, 1), (0, 1), (32, 64, 128, 256), (2, 4, 8), (1, 3),
                                                         (1, 2, 4, 8, 16, 32))
           if not (bn == 32 and w == 8) and not (pd == 1 and st == 3)]


def read_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def read_words(w_ptr, out_ptr, BLOCK: tl.constexpr, ITERS: tl.constexpr, EV: tl.constexpr):
        pid = tl.program_id(0)
        base = pid.to(tl.int64) * BLOCK * ITERS
        acc = tl.zeros((BLOCK,), tl.int32)
        for i in tl.static_range(ITERS):
            if EV:
                acc ^= tl.load(w_ptr + base + i * BLOCK + tl.arange(0, BLOCK), eviction_policy="evict_first")
            else:
                acc ^= tl.load(w_ptr + base + i * BLOCK + tl.arange(0, BLOCK))
        tl.store(out_ptr + pid, tl.sum(acc, axis=0))
    return read_words


def launcher(x, w, s, z, n, k, cfg):
    """A no-argument call of gemv4 with one config (buffers made here)."""
    import triton

    from lowbit.kernels.triton.gemv4 import gemv4_kernel

    split = cfg["SPLIT"]
    ws = torch.empty(split, x.shape[0], n, dtype=torch.float32, device="cuda")
    out = torch.empty(x.shape[0], n, dtype=x.dtype, device="cuda")
    locks = torch.zeros(1 << 16, dtype=torch.int32, device="cuda")
    grid = (triton.cdiv(n, cfg["BN"]), x.shape[0], split)
    args = (x, s, w, s, s if z is None else z, s, s, out, ws, locks, x.shape[0], n, k, s.stride(0), s.stride(1),
            x.stride(0), n, k // 128 // split)
    kw = dict(GS=128, HAS_Z=z is not None, ZERO=8.0, HAS_BIAS=False, SPLIT=split, BN=cfg["BN"], DEC=cfg["DEC"],
              EV=cfg["EV"], PD=cfg["PD"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return (lambda: gemv4_kernel[grid](*args, **kw)), out


def layer(k, n):
    torch.manual_seed(0)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    ql = quant_linear(w, "int4", {"group_size": 128})
    return w, ql, *ql.kernel.tensors(ql._buffers, ql._prepared)


def compile_some(configs) -> int:
    """Compile ``configs`` in a worker process (Triton's disk cache keeps them for the timing process): one
    specialization serves every shape, all being multiples of 16."""
    _, _, w, s, z = layer(4096, 4096)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    failed = 0
    for cfg in configs:
        try:
            launcher(x, w, s, z, 4096, 4096, cfg)[0]()
        except Exception:  # noqa: BLE001 - out of registers for this tile: not a candidate
            failed += 1
    torch.cuda.synchronize()
    return failed


def baselines(w, x, k, n) -> dict:
    from lowbit.kernels.triton.ops import bench_gpu

    out = {}
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda")
    packed = torch.ops.aten._convert_weight_to_int4pack(((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8), 8)
    sz = torch.randn(k // 128, n, 2, device="cuda", dtype=torch.bfloat16) * 0.01
    out["torch_int4"] = lambda: torch.ops.aten._weight_int4pack_mm(x, packed, 128, sz)
    try:
        from gemlite.helper import A16W4_HQQ_INT

        gl = A16W4_HQQ_INT(device="cuda:0", dtype=torch.bfloat16).from_weights(
            codes.to(torch.uint8), torch.rand(n, k // 128, device="cuda", dtype=torch.bfloat16) * 0.01,
            torch.full((n, k // 128), 8.0, device="cuda", dtype=torch.bfloat16))
        gl(x)
        out["gemlite"] = lambda: gl(x)
    except ImportError:
        pass
    out["bf16"] = lambda: F.linear(x, w)
    return {name: bench_gpu(fn) for name, fn in out.items()}, out


def run_shape(k: int, n: int, full: bool) -> dict:
    from lowbit.kernels.triton import tune
    from lowbit.kernels.triton.ops import bench_gpu

    w, ql, wt, s, z = layer(k, n)
    nbytes = ql.packed_nbytes()
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    ref = ref_out(ql, x)
    r = {"K": k, "N": n, "bytes": nbytes}
    src, dst = torch.empty_like(w), torch.empty_like(w)
    r["copy_us"] = bench_gpu(lambda: dst.copy_(src))
    r["copy_gbs"] = 4 * w.numel() / r["copy_us"] / 1e3
    small, small2 = torch.empty(nbytes, dtype=torch.uint8, device="cuda"), torch.empty(nbytes, dtype=torch.uint8,
                                                                                        device="cuda")
    r["copy_small_gbs"] = 2 * nbytes / bench_gpu(lambda: small2.copy_(small)) / 1e3
    times, fns = baselines(w, x, k, n)
    r.update({f"{name}_us": us for name, us in times.items()})
    r["lowbit_now"] = tune.short(tune.config_for(ql.kernel.triton_format(ql.request), torch.bfloat16, 1, k, n))
    r["lowbit_now_us"] = bench_gpu(lambda: ql(x))
    words = wt[: n * k // 8]
    floor = {}
    if full:
        read = read_kernel()
        for blk, its, nw, ev in itertools.product((2048, 4096, 8192), (1, 2, 4), (4, 8), (0, 1)):
            sums = torch.empty(words.numel() // (blk * its), dtype=torch.int32, device="cuda")
            floor[(blk, its, nw, ev)] = bench_gpu(
                lambda: read[(sums.numel(),)](words, sums, BLOCK=blk, ITERS=its, EV=ev, num_warps=nw), reps=30)
        best = min(floor, key=floor.get)
        r["read_floor_us"], r["read_floor_cfg"] = floor[best], "BLOCK {} ITERS {} warps {} evict_first {}".format(*best)
    timed = []
    for cfg in CONFIGS:
        if (k // 128) % cfg["SPLIT"] == 0:
            fn, _ = launcher(x, wt, s, z, n, k, cfg)
            timed.append((bench_gpu(fn, reps=25), cfg))
    timed.sort(key=lambda t: t[0])
    again = []
    for _, cfg in timed[:8]:
        fn, out = launcher(x, wt, s, z, n, k, cfg)
        us = bench_gpu(fn, reps=60)
        out.fill_(float("nan"))
        fn()
        again.append({"us": us, "cfg": cfg, "rel_err": rel_err(out, ref)})
    again.sort(key=lambda t: t["us"])
    r["best"], r["all"] = again, [[round(us, 2), cfg] for us, cfg in timed]
    if full:
        fn, _ = launcher(x, wt, s, z, n, k, again[0]["cfg"])
        blk, its, nw, ev = best
        sums = torch.empty(words.numel() // (blk * its), dtype=torch.int32, device="cuda")
        r["read_flush"] = {"best_us": bench_gpu(fn, read_flush=True),
                           "copy_us": bench_gpu(lambda: dst.copy_(src), read_flush=True),
                           "lowbit_now_us": bench_gpu(lambda: ql(x), read_flush=True),
                           "torch_int4_us": bench_gpu(fns["torch_int4"], read_flush=True),
                           "read_floor_us": bench_gpu(lambda: read[(sums.numel(),)](
                               words, sums, BLOCK=blk, ITERS=its, EV=ev, num_warps=nw), read_flush=True)}
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=480, help="seconds; shapes not started by then are left out")
    args = ap.parse_args()
    t0 = time.time()
    with mp.get_context("spawn").Pool(14) as pool:
        failed = sum(pool.map(compile_some, [CONFIGS[i::14] for i in range(14)]))
    print(f"compiled {len(CONFIGS)} configs in {time.time() - t0:.0f}s, {failed} failed", flush=True)
    try:
        import gemlite

        gemlite.load_config(str(Path(gemlite.__file__).parent / "configs" / "h100.json"))
    except ImportError:
        print("gemlite is not installed: no GemLite column")
    rows = []
    path = args.out / f"gemv4_sweep-{device_info()['gpu'].split()[1].lower()}-{time.strftime('%Y-%m-%d')}.json"
    for k, n in SHAPES + DECODE:
        if time.time() - t0 > args.budget:
            print(f"budget spent: {k}x{n} left out")
            break
        r = run_shape(k, n, (k, n) in SHAPES)
        rows.append(r)
        b, copy = r["best"][0], r["copy_gbs"]
        print(f"K{k} N{n}: copy {copy:.0f} GB/s, floor {r.get('read_floor_us', float('nan')):.2f} us, bf16 "
              f"{r['bf16_us']:.2f}, torch_int4 {r['torch_int4_us']:.2f}, "
              f"gemlite {r.get('gemlite_us', float('nan')):.2f}, lowbit_now {r['lowbit_now_us']:.2f} "
              f"[{r['lowbit_now']}], best {b['us']:.2f} {b['cfg']} "
              f"(of copy: now {r['bytes'] / r['lowbit_now_us'] / 1e3 / copy:.3f}, best "
              f"{r['bytes'] / b['us'] / 1e3 / copy:.3f}) read_flush {r.get('read_flush')}", flush=True)
        path.write_text(json.dumps({"device": device_info(), "rows": rows}, indent=0) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
