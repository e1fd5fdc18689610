"""M=1 GEMV variants head to head: how the weights are kept in flight.

- ``registers``: the tuned config from the cache (the next chunk loaded into registers while this one is computed).
- ``pipelined``: every load in the loop (``PD=0``), Triton's software pipelining keeping ``num_stages - 1`` chunks
  in flight through shared memory.

A third variant, the weights fetched by the copy engine through a TMA tensor descriptor, was 1-17% slower than
the better of these two on every shape and format on an H100 (``results/gemv_variants-h100-2026-11-26-pipelined-tma
.json``, measured at commit 1ae99fb) and was removed.

For int4 g128, nf4 b64 and int8 on the decode shapes of a Llama-3-8B-sized model, each variant's best over a grid
of tiles, with µs, effective GB/s, the fraction of a same-run copy's bandwidth and the error against the reference
op. The L2 is flushed before every timed replay (``ops.bench_gpu``).

    PYTHONPATH=src python benchmarks/gemv_variants.py --out DIR
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from gpu_linear import DT, device_info, quant_linear, ref_out, rel_err  # noqa: E402

SHAPES = ((4096, 4096), (4096, 6144), (4096, 14336), (14336, 4096), (4096, 28672), (8192, 28672))
FORMATS = {"int4": ("int4", {"group_size": 128}), "nf4": ("nf4", {"block_size": 64}), "int8": ("int8", {})}
TILES = ((32, 2, 4), (32, 2, 8), (64, 2, 4), (64, 2, 8), (64, 2, 16), (64, 4, 4), (64, 4, 8), (128, 2, 4),
         (128, 2, 8), (128, 4, 4), (128, 4, 8), (256, 4, 4))  # (BN, warps, split-K)
STAGES = (2, 3, 4)


def pipelined() -> list[dict]:
    return [{"path": "gemv", "BN": bn, "CPI": 1, "SPLIT_K": split, "num_warps": warps, "num_stages": stages, "PD": 0,
             "PF": 0} for bn, warps, split in TILES for stages in STAGES]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    args = ap.parse_args()
    from lowbit.kernels.triton import ops, tune

    rows = []
    for k, n in SHAPES:
        torch.manual_seed(0)
        w = torch.randn(n, k, device="cuda", dtype=DT) / k**0.5
        src, dst = torch.empty_like(w), torch.empty_like(w)
        copy_gbs = 2 * w.numel() * 2 / ops.bench_gpu(lambda: dst.copy_(src)) / 1e3
        x = torch.randn(1, k, device="cuda", dtype=DT)
        for name in args.formats:
            ql = quant_linear(w, *FORMATS[name])
            wt, s, z = ql.kernel.tensors(ql._buffers, ql._prepared)
            tf = ql.kernel.triton_format(ql.request)
            errors = []
            measure = ops._measure(x, wt, s, z, None, tf, errors)
            ref = ref_out(ql, x)
            tuned = tune.config_for(tf, DT, 1, k, n)
            for variant, configs in (("registers", [tuned]), ("pipelined", pipelined())):
                timed = sorted((measure(c), i) for i, c in enumerate(configs))
                us, best = timed[0]
                cfg = configs[best]
                err = rel_err(ops.run(x, wt, s, z, None, tf, cfg), ref) if us < float("inf") else None
                gbs = ql.packed_nbytes() / us / 1e3
                rows.append({"K": k, "N": n, "format": name, "variant": variant, "us": round(us, 2),
                             "gbs": round(gbs), "of_copy": round(gbs / copy_gbs, 3), "rel_err": err,
                             "config": tune.short(cfg),
                             "failed": sum(t == float("inf") for t, _ in timed), "first_error": errors[:1]})
                errors.clear()
                print(rows[-1], flush=True)
    print_table(rows, ["K", "N", "format", "variant", "us", "gbs", "of_copy", "rel_err", "config", "failed"])
    info = device_info()
    slug = info["gpu"].split()[1].lower() if len(info["gpu"].split()) > 1 else "gpu"
    path = args.out / f"gemv_variants-{slug}-{datetime.date.today()}.json"
    path.write_text(json.dumps({"device": info, "rows": rows}, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
