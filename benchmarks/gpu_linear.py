"""GPU linear layers: lowbit's Triton kernels against the copy ceiling, bf16 and other int4/nf4 kernels.

For (K, N) in (4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672) and M in 1, 16, 64, 256, in one process:

- ``copy``: a device-to-device copy of a bf16 tensor of the weight's size: GB/s counts bytes read + written,
  the bandwidth ceiling of this card at this size.
- ``bf16``: ``F.linear``. ``torch_int4``: ``aten._weight_int4pack_mm`` (tinygemm, int4 g128).
- ``gemlite_int4``: GemLite's A16W4 (Triton, int4 g128, its shipped configs for the GPU);
- ``bnb_nf4``: bitsandbytes ``matmul_4bit`` (nf4, block 64); ``torchao_int4`` / ``torchao_int8``: torchao's
  weight-only configs on an ``nn.Linear`` (eager); each only where the package imports.
- ``lowbit_*``: a QuantLinear made by ``lowbit.quantize_`` (int4 g128 asym, int8, nf4 b64, fp8, fp8 W8A8 dynamic),
  its config tuned first (``--tune``, default on) and written to the tuning cache.

Times are medians of CUDA-graph replays timed with CUDA events, the L2 flushed before every replay (GPU
time: Python launch costs are left out, as in a captured decode step). ``gbs`` is the
effective bandwidth: bytes of packed weights + scales + zeros read / time. ``x_bf16`` = bf16 µs / µs;
``of_copy`` = gbs / copy GB/s of the same size. ``rel_err``: relative error against lowbit's reference op.

    PYTHONPATH=src python benchmarks/gpu_linear.py --out DIR [--no-tune] [--quick] [--ms 1 16] [--only lowbit_int4]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lowbit  # noqa: E402
from common import print_table  # noqa: E402

SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672))
LARGE = SHAPES[1:]
MS = (1, 16, 64, 256)
DT = torch.bfloat16
LOWBIT = {"lowbit_int4": ("int4", {"group_size": 128}), "lowbit_int8": ("int8", {}),
          "lowbit_nf4": ("nf4", {"block_size": 64}), "lowbit_fp8": ("fp8", {}),
          "lowbit_fp8dyn": ("fp8", {"activations": "dynamic"})}


def bench(fn) -> float:
    """Median GPU µs from CUDA-graph replays with the L2 flushed before each (lowbit's tuner times the same way);
    a baseline that cannot be captured is timed by ``triton.testing.do_bench`` (CUDA events, L2 flushed)."""
    from lowbit.kernels.triton.ops import bench_gpu

    fn()
    try:
        return bench_gpu(fn)
    except Exception:  # noqa: BLE001
        import triton.testing

        return 1e3 * triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def device_slug() -> str:
    from lowbit.kernels.triton.tune import device_slug as slug

    return slug()


def device_info() -> dict:
    p = torch.cuda.get_device_properties(0)
    import triton

    return {"kind": "cuda", "gpu": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 1), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda}


def quant_linear(w: torch.Tensor, method: str, fields: dict) -> nn.Module:
    n, k = w.shape
    holder = nn.Sequential(nn.Linear(k, n, bias=False, device=w.device, dtype=w.dtype))
    with torch.no_grad():
        holder[0].weight.copy_(w)
    lowbit.quantize_(holder, lowbit.config(method, **fields))
    return holder[0]


def ref_out(ql, x):
    canon = ql.canonical_tensors()
    return torch.ops.lowbit.linear_ref(x, [canon[n] for n in ql.fmt.tensor_names()], ql.fmt.key(), None)


def rel_err(got, ref) -> float:
    return round(((got.float() - ref.float()).norm() / ref.float().norm()).item(), 5)


def baselines(w: torch.Tensor) -> dict:
    """name → (callable(x), weight bytes read); the ones whose package or op is missing are left out (noted)."""
    n, k = w.shape
    out, notes = {}, {}
    out["bf16"] = (lambda x: F.linear(x, w), n * k * 2)
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device=w.device)
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack(((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8), 8)
        sz = torch.randn(k // 128, n, 2, device=w.device, dtype=DT) * 0.01
        out["torch_int4"] = (lambda x: torch.ops.aten._weight_int4pack_mm(x, packed, 128, sz), n * k // 2 + sz.numel() * 2)
    except Exception as e:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
        notes["torch_int4"] = f"{type(e).__name__}: {e}"[:200]
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bf

        wq, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
        out["bnb_nf4"] = (lambda x: bnb.matmul_4bit(x, wq.t(), quant_state=state), n * k // 2 + n * k // 64 * 4)
    except Exception as e:  # noqa: BLE001
        notes["bnb_nf4"] = f"{type(e).__name__}: {e}"[:200]
    try:  # GemLite's A16W4 (int4 g128, bf16 scales and zeros), with the configs it ships for this GPU
        import gemlite
        from gemlite.helper import A16W4_HQQ_INT

        gemlite.load_config(str(Path(gemlite.__file__).parent / "configs" / f"{device_slug()}.json"), print_error=False)
        groups = (n, k // 128)
        gl = A16W4_HQQ_INT(device=str(w.device), dtype=DT).from_weights(
            codes.to(torch.uint8), torch.rand(groups, device=w.device, dtype=DT) * 0.01,
            torch.full(groups, 8.0, device=w.device, dtype=DT))
        gl(torch.randn(1, k, device=w.device, dtype=DT))
        out["gemlite_int4"] = (gl, n * k // 2 + 2 * n * (k // 128) * 2)
    except Exception as e:  # noqa: BLE001
        notes["gemlite_int4"] = f"{type(e).__name__}: {e}"[:200]
    for name, make, nbytes in (("torchao_int4", lambda q: q.Int4WeightOnlyConfig(group_size=128), n * k // 2 + n * k // 32),
                               ("torchao_int8", lambda q: q.Int8WeightOnlyConfig(), n * k + n * 2)):
        try:
            import torchao.quantization as q

            lin = nn.Sequential(nn.Linear(k, n, bias=False, device=w.device, dtype=DT))
            with torch.no_grad():
                lin[0].weight.copy_(w)
            q.quantize_(lin, make(q))
            lin(torch.randn(1, k, device=w.device, dtype=DT))
            out[name] = (lin, nbytes)
        except Exception as e:  # noqa: BLE001
            notes[name] = f"{type(e).__name__}: {e}"[:200]
    return out, notes


def run_shape(k: int, n: int, ms, tune_configs: bool, only=None) -> tuple[list[dict], dict]:
    from lowbit.kernels.triton import ops, tune

    torch.manual_seed(0)
    w = torch.randn(n, k, device="cuda", dtype=DT) / k**0.5
    src, dst = torch.empty_like(w), torch.empty_like(w)
    copy_us = bench(lambda: dst.copy_(src))
    copy_gbs = 2 * w.numel() * 2 / copy_us / 1e3
    rows = [{"K": k, "N": n, "M": 0, "variant": "copy", "us": round(copy_us, 2), "gbs": round(copy_gbs)}]
    base, notes = baselines(w)
    layers = {name: quant_linear(w, method, fields) for name, (method, fields) in LOWBIT.items()
              if only is None or name in only}
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=DT)
        found = {}
        for name, (fn, nbytes) in base.items():
            try:
                found[name] = (bench(lambda: fn(x)), nbytes, None, "")
            except Exception as e:  # noqa: BLE001
                notes[f"{name} M={m}"] = f"{type(e).__name__}: {e}"[:200]
        for name, ql in layers.items():
            if not ql.kernel.name.startswith("triton"):
                notes[name] = f"kernel {ql.kernel.name}: {ql.kernel_reason}"
            wt, s, z = ql.kernel.tensors(ql._buffers, ql._prepared)
            tf = ql.kernel.triton_format(ql.request)
            if tune_configs:
                tune.tune(tf, DT, m, k, n, ops._measure(x, wt, s, z, None, tf))
            cfg = tune.config_for(tf, DT, m, k, n)
            found[name] = (bench(lambda: ql(x)), ql.packed_nbytes(), rel_err(ql(x), ref_out(ql, x)), tune.short(cfg))
        bf16_us = found["bf16"][0]
        for name, (us, nbytes, err, cfg) in found.items():
            gbs = nbytes / us / 1e3
            rows.append({"K": k, "N": n, "M": m, "variant": name, "us": round(us, 2), "gbs": round(gbs),
                         "x_bf16": round(bf16_us / us, 3), "of_copy": round(gbs / copy_gbs, 3), "rel_err": err,
                         "config": cfg})
    return rows, notes


def get(rows, k, n, m, variant):
    return next((r for r in rows if (r["K"], r["N"], r["M"], r["variant"]) == (k, n, m, variant)), None)


def targets(rows) -> list[dict]:
    """The issue's targets, each with its measured value(s) and met / missed."""
    out = []

    def add(target, values, goal):
        if values:  # a partial run (--only, --ms) leaves out the targets it did not measure
            out.append({"target": target, "measured": values, "met": all(x >= goal for x in values.values())})

    def of(m, variant, field, shapes=SHAPES):
        return {f"{k}x{n}": r[field] for k, n in shapes if (r := get(rows, k, n, m, variant))}

    def faster_than(baseline, variant):  # baseline µs / lowbit µs at M=1, on the shapes where the baseline ran
        return {f"{k}x{n}": round(b["us"] / r["us"], 3)
                for k, n in SHAPES if (b := get(rows, k, n, 1, baseline)) and (r := get(rows, k, n, 1, variant))}

    add("int4 g128 M=1 >= 0.80 of copy bandwidth (3 large shapes)", of(1, "lowbit_int4", "of_copy", LARGE), 0.8)
    add("int4 g128 M=1 no slower than torch int4 (torch µs / lowbit µs >= 1)",
        faster_than("torch_int4", "lowbit_int4"), 1)
    add("int4 g128 M=1 no slower than GemLite (GemLite µs / lowbit µs >= 1)",
        faster_than("gemlite_int4", "lowbit_int4"), 1)
    for m, goal in ((16, 1.5), (64, 1.0), (256, 0.8)):
        add(f"int4 M={m} >= {goal}x bf16", of(m, "lowbit_int4", "x_bf16"), goal)
    add("int8 M=1 >= 1.8x bf16", of(1, "lowbit_int8", "x_bf16"), 1.8)
    add("nf4 M=1 >= 1.3x bitsandbytes NF4", faster_than("bnb_nf4", "lowbit_nf4"), 1.3)
    add("fp8 W8A8 M=256 >= 1.5x bf16", of(256, "lowbit_fp8dyn", "x_bf16"), 1.5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON results and the tuning cache")
    ap.add_argument("--no-tune", dest="tune", action="store_false", help="use the cached/default configs")
    ap.add_argument("--quick", action="store_true", help="first shape, M=1 and 16 only (a smoke run)")
    ap.add_argument("--ms", type=int, nargs="+", help=f"batch sizes (default {' '.join(map(str, MS))})")
    ap.add_argument("--only", nargs="+", choices=sorted(LOWBIT), help="lowbit variants to run (default: all)")
    args = ap.parse_args()
    from lowbit.kernels.triton import tune

    args.out.mkdir(parents=True, exist_ok=True)
    shapes, ms = (SHAPES[:1], MS[:2]) if args.quick else (SHAPES, MS)
    ms = args.ms or ms
    rows, notes, t0 = [], {}, time.time()
    date = datetime.date.today().isoformat()
    partial = args.quick or args.ms or args.only
    path = args.out / f"gpu_linear-{tune.device_slug()}-{date}{'-partial' if partial else ''}.json"
    for k, n in shapes:  # results and tuning cache written after every shape: a cut-off run keeps what it had
        r, nt = run_shape(k, n, ms, args.tune, args.only)
        rows += r
        notes.update({f"{k}x{n} {key}": v for key, v in nt.items()})
        print(f"{k}x{n} done at {time.time() - t0:.0f}s", flush=True)
        if args.tune:
            tune.save(args.out / tune.cache_path().name)
        payload = {"date": date, "device": device_info(), "rows": rows, "notes": notes,
                   "targets": targets(rows) if (k, n) == SHAPES[-1] else [], "seconds": round(time.time() - t0)}
        path.write_text(json.dumps(payload, indent=1) + "\n")
    summary = payload["targets"]
    cols = ["K", "N", "M", "variant", "us", "gbs", "x_bf16", "of_copy", "rel_err", "config"]
    print_table(rows, cols, title=f"gpu_linear on {payload['device']['gpu']}")
    for k, v in notes.items():
        print(f"note {k}: {v}")
    for t in summary:
        print(f"{'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")
    print("wrote", path)


if __name__ == "__main__":
    main()
