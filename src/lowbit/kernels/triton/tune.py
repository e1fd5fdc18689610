"""Launch configurations of the Triton kernels, keyed on (weight format, dtype, M bucket, K, N) and cached as JSON.

The cache is a file per GPU model beside this module (``tuned_h100.json``, ...), written by
``benchmarks/gpu_linear.py --tune`` and read at run time: a cached key runs its measured best config, any
other a heuristic default. Tuning never happens inside a forward unless ``LOWBIT_TUNE=1`` (and never while a
CUDA graph is being captured).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
from pathlib import Path
from typing import Callable

import torch

from lowbit.kernels.triton.family import Family, TritonFormat

HERE = Path(__file__).resolve().parent
TUNE_ENV = "LOWBIT_TUNE"
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GEMV_MAX_M = 4  # above this the GEMV re-reads each weight too often
DEQUANT_MIN_M = 64  # from this bucket the tuner also tries int4 dequantized to x's dtype + cuBLAS (dequant.py)
DEQUANT_ALWAYS_M = 512  # and from this M int4 always takes it (H100: per layer faster on all six 8B shapes from
# M = 256, but an eager prompt of 256 tokens waits on the host, and there the fused GEMM's single launch wins)


def bucket(m: int) -> int:
    return next((b for b in BUCKETS if m <= b), BUCKETS[-1])


def device_slug(device: torch.device | None = None) -> str:
    return _slug(torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=8)
def _slug(name: str) -> str:
    for model in ("H100", "H200", "A100", "L40S", "L4", "B200"):
        if model in name:
            return model.lower()
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def cache_path(device: torch.device | None = None) -> Path:
    return HERE / f"tuned_{device_slug(device)}.json"


@functools.lru_cache(maxsize=8)
def _load(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())["configs"]
    except (OSError, ValueError, KeyError):
        return {}


def cache(device: torch.device | None = None) -> dict[str, dict]:
    return _load(_cache_path(torch.cuda.current_device() if device is None and torch.cuda.is_available() else device))


@functools.lru_cache(maxsize=8)
def _cache_path(device) -> Path:
    return cache_path(device)


def key(tf: TritonFormat, dtype: torch.dtype, m: int, k: int, n: int) -> str:
    """The cache key of a layer's launches at M rows: ``int4/128|bfloat16|M16|K4096|N11008``."""
    return f"{tf.label}|{str(dtype).removeprefix('torch.')}|M{bucket(m)}|K{k}|N{n}"


SMS = 132  # programs worth launching: about two per multiprocessor of an H100


def gemv4_fits(tf: TritonFormat) -> bool:
    """Whether ``gemv4_kernel`` (gemv4.py) runs this weight: int4 with one scale a row per chunk of 128 inputs."""
    return tf.family is Family.INT4 and tf.group % 128 == 0  # group 0: per channel


def default(tf: TritonFormat, dtype: torch.dtype, m: int, k: int, n: int) -> dict:
    """A reasonable untuned config: GEMV at M=1, split-K skinny GEMM to M=16, plain tiles above (the H100 tuning
    picked split-K 4-16 GEMVs of 32-128 rows for M=1 and swapped 16-row tiles for M=16)."""
    b = bucket(m)
    if tf.dynamic and b >= 16 and dtype == torch.bfloat16 and n % 16 == 0:  # torch._scaled_mm needs N % 16 == 0
        return {"path": "scaled_mm"}
    if b == 1 and gemv4_fits(tf):
        split = max(1, min(16, 8 * SMS // -(-n // 128), k // 512))
        return {"path": "gemv4", "BN": 128, "DEC": 1, "EV": 1, "PD": 0, "CPI": 1, "SPLIT_K": split, "num_warps": 4,
                "num_stages": 1}
    if b == 1:
        split = max(1, min(8, 4 * SMS // -(-n // 64), k // 512))
        return {"path": "gemv", "BN": 64, "CPI": 1, "SPLIT_K": split, "num_warps": 4, "num_stages": 1}
    if b <= 16:
        split = max(1, min(8, 2 * SMS // -(-n // 64), k // 512))
        return {"path": "gemm", "BM": 16, "BN": 64, "CPI": 1, "SPLIT_K": split, "num_warps": 4, "num_stages": 3,
                "SWAP": True}
    return {"path": "gemm", "BM": 64 if b <= 64 else 128, "BN": 128, "CPI": 1, "SPLIT_K": 1, "num_warps": 8,
            "num_stages": 3}


GEMV = ((16, 2, 1), (16, 4, 1), (16, 4, 4), (32, 2, 4), (32, 2, 8), (32, 4, 2), (32, 4, 4), (32, 4, 8), (32, 4, 16),
        (64, 2, 4), (64, 2, 8), (64, 2, 16), (64, 4, 2), (64, 4, 4), (64, 4, 8), (64, 4, 16), (128, 4, 2),
        (128, 4, 4), (128, 4, 8), (128, 4, 16), (128, 8, 2), (256, 8, 4), (256, 8, 8),
        (64, 1, 8), (64, 1, 16), (128, 2, 4), (128, 2, 8), (128, 2, 16), (256, 4, 4), (256, 4, 8))
# (BN, warps, split-K) of GEMV. A warp covers 8 rows of a [BN, 16] word tile (4 threads a row, 16 bytes each), so a
# thread holds BN / (8 warps) rows: the last rows above give it 8, over which its x values (converted, summed)
# are shared.
GEMV4 = tuple((bn, warps, split) for bn in (64, 128, 256) for warps in (2, 4, 8) for split in (4, 8, 16))
# gemv4's (BN, warps, split-K), each with both decodes and evict_first weights: the H100 sweep (2026-12-06,
# benchmarks/gemv4_sweep.py) chose among these for the Llama-3-8B shapes at M=1; num_stages changed nothing there.
SKINNY = ((False, 32, 1, 4, 3), (False, 64, 2, 4, 3), (False, 64, 4, 4, 3), (False, 128, 2, 4, 4),
          (True, 64, 1, 4, 3), (True, 64, 2, 4, 3), (True, 64, 4, 4, 3), (True, 128, 1, 4, 3), (True, 128, 2, 4, 3),
          (True, 128, 4, 4, 3), (True, 128, 2, 8, 3), (True, 256, 1, 8, 3))  # BM 16: (swap, BN, split, warps, stages)
TILES = ((False, 32, 64, 2, 4, 3), (False, 32, 128, 1, 4, 3), (False, 64, 64, 1, 4, 3), (False, 64, 128, 1, 4, 3),
         (False, 64, 128, 1, 8, 4), (False, 128, 128, 1, 8, 3), (False, 128, 64, 1, 4, 3), (False, 128, 256, 1, 8, 3),
         (True, 32, 128, 1, 4, 3), (True, 64, 128, 1, 4, 3), (True, 32, 64, 2, 4, 3), (True, 64, 64, 1, 4, 4),
         (True, 128, 64, 1, 4, 3), (True, 128, 128, 1, 8, 3))  # (swap, BM, BN, split, warps, stages)
# 4-bit tiles unpacked straight to [BN, 128] (FLAT): weights first (SWAP), so the dequantized tile feeds the tensor
# cores from registers; two stages, as each stage holds the words once per code in shared memory.
FLAT_SKINNY = ((64, 4, 4, 2), (128, 2, 4, 2))  # BM 16: (BN, split, warps, stages)
FLAT_TILES = ((64, 64, 1, 4, 2), (128, 64, 1, 4, 2), (64, 128, 1, 4, 2), (128, 128, 1, 8, 2))  # (BM, BN, ...)


def candidates(tf: TritonFormat, dtype: torch.dtype, m: int) -> list[dict]:
    """What the tuner tries for one M bucket."""
    b = bucket(m)
    four_bit = tf.four_bit
    out = []
    if b <= GEMV_MAX_M:
        for bn, warps, split in GEMV:
            # PD 1: the next chunk prefetched into registers (PF: its scales too); PD 0: Triton's pipelining
            for pf, pd, stages in ((0, 1, 1), (1, 1, 1), (0, 0, 2), (0, 0, 3)) if four_bit else \
                    ((1, 1, 1), (1, 0, 2), (1, 0, 3)):
                out.append({"path": "gemv", "BN": bn, "CPI": 1, "SPLIT_K": split, "num_warps": warps,
                            "num_stages": stages, "PF": pf, "PD": pd})
        if gemv4_fits(tf):
            for (bn, warps, split), dec in itertools.product(GEMV4, (0, 1)):
                out.append({"path": "gemv4", "BN": bn, "CPI": 1, "SPLIT_K": split, "num_warps": warps,
                            "num_stages": 1, "DEC": dec, "EV": 1, "PD": 0})
            out += [{"path": "gemv4", "BN": 128, "CPI": 1, "SPLIT_K": split, "num_warps": 4, "num_stages": 1,
                     "DEC": 1, "EV": 1, "PD": 1} for split in (4, 8, 16)]
    tiles = []
    if b <= 16:
        tiles += [(swap, 16, bn, split, warps, stages, 0) for swap, bn, split, warps, stages in SKINNY]
        tiles += [(True, 16, bn, split, warps, stages, 1) for bn, split, warps, stages in FLAT_SKINNY if four_bit]
    else:
        tiles += [(*t, 0) for t in TILES if t[1] <= 2 * b]
        tiles += [(True, *t, 1) for t in FLAT_TILES if four_bit and t[0] <= 2 * b]
    for swap, bm, bn, split, warps, stages, flat in tiles:
        cfg = {"path": "gemm", "BM": bm, "BN": bn, "CPI": 1, "SPLIT_K": split, "num_warps": warps,
               "num_stages": stages, "SWAP": swap}
        out.append(cfg | {"FLAT": 1} if flat else cfg)
        if tf.family is Family.INT4 and not flat:  # the fp32 decode too: at M=256 it was up to 7% faster on an H100
            out.append(cfg | {"PK": 0})
    if tf.dynamic and b >= 16 and dtype == torch.bfloat16:
        out.append({"path": "scaled_mm"})
    if tf.family is Family.INT4 and b >= DEQUANT_MIN_M:
        out.append({"path": "dequant"})
    return out


def fixed(tf: TritonFormat, m: int) -> dict | None:
    """int4 at M >= ``DEQUANT_ALWAYS_M`` (long prompts; past the last bucket, 256) is dequantized + cuBLAS,
    whatever is cached."""
    return {"path": "dequant"} if tf.family is Family.INT4 and m >= DEQUANT_ALWAYS_M else None


def config_for(tf: TritonFormat, dtype: torch.dtype, m: int, k: int, n: int,
               measure: Callable[[], Callable[[dict], float]] | None = None) -> dict:
    """The fixed path of this M (``fixed``), else the cached config, else (with $LOWBIT_TUNE=1 and a ``measure``
    maker) a freshly tuned one, else the default."""
    found = fixed(tf, m) or cache().get(key(tf, dtype, m, k, n))
    if found is not None:
        return found
    if measure is not None and os.environ.get(TUNE_ENV) == "1" and not torch.cuda.is_current_stream_capturing():
        return tune(tf, dtype, m, k, n, measure())[0]
    return default(tf, dtype, m, k, n)


def tune(tf: TritonFormat, dtype: torch.dtype, m: int, k: int, n: int,
         measure: Callable[[dict], float]) -> tuple[dict, dict[str, float]]:
    """Time every candidate with ``measure(config) -> µs`` (inf when it fails); remember and return the best."""
    timings = {json.dumps(c, sort_keys=True): measure(c) for c in candidates(tf, dtype, m)}
    best = json.loads(min(timings, key=timings.get))
    cache()[key(tf, dtype, m, k, n)] = best
    return best, timings


def save(path: Path | None = None) -> Path:
    """Write the configs known now (cached and freshly tuned) to the cache file of this GPU."""
    path = path or cache_path()
    path.write_text(json.dumps({"device": torch.cuda.get_device_name(), "triton": _triton_version(),
                                "configs": dict(sorted(cache().items()))}, indent=1) + "\n")
    return path


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "none"


def short(cfg: dict) -> str:
    if cfg["path"] == "scaled_mm":
        return "torch._scaled_mm"
    if cfg["path"] == "dequant":
        return "dequantize + cuBLAS"
    if cfg["path"] == "gemv4":
        tile = f"BN{cfg['BN']} dec{cfg.get('DEC', 0)}{' prefetch' if cfg.get('PD') else ''}"
    elif cfg["path"] == "gemv":
        tile = f"BN{cfg['BN']}{' pf' if cfg.get('PF') else ''}{' piped' if cfg.get('PD') == 0 else ''}"
    else:
        tile = (f"{cfg['BM']}x{cfg['BN']}{' swap' if cfg.get('SWAP') else ''}{' flat' if cfg.get('FLAT') else ''}"
                f"{' fp32-decode' if cfg.get('PK') == 0 else ''}")
    return f"{cfg['path']} {tile} splitK{cfg['SPLIT_K']} w{cfg['num_warps']}s{cfg['num_stages']}"


def describe(tf: TritonFormat, dtype: torch.dtype, k: int, n: int) -> str:
    """The configs this layer will run, per M bucket, and whether they were tuned on this GPU."""
    known = cache() if torch.cuda.is_available() else {}
    parts = []
    for m in (1, 16, 256):
        cfg = known.get(key(tf, dtype, m, k, n))
        parts.append(f"M{m}: {short(cfg or default(tf, dtype, m, k, n))}{'' if cfg else ' (untuned)'}")
    if fixed(tf, DEQUANT_ALWAYS_M):
        parts.append(f"M{DEQUANT_ALWAYS_M}+: {short(fixed(tf, DEQUANT_ALWAYS_M))}")
    return "; ".join(parts)
