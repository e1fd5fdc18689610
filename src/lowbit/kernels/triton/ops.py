"""``lowbit::triton_linear``: the CUDA op behind the Triton kernels, and the launcher it calls.

The op is told the weight's :class:`~lowbit.kernels.triton.family.TritonFormat` as typed scalars (family, group,
code book, dynamic): ``INT4`` (zeros tensor given: asymmetric; none: symmetric codes stored + 8), ``CODEBOOK``
(nf4, fp4), ``INT8`` (symmetric per channel), ``FP8`` (per channel, weight-only; ``dynamic``: W8A8, activations
quantized per row at run time, then an fp8 x fp8 product through Triton or ``torch._scaled_mm``, whichever the
tuner found faster for the shape). Under Triton's interpreter the op runs on the CPU too.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from lowbit.kernels.base import fake_linear, flat
from lowbit.kernels.triton import tune
from lowbit.kernels.triton.family import Family, TritonFormat
from lowbit.kernels.triton.env import interpreting
from lowbit.kernels.triton.lut import kernel_table, table_words
from lowbit.qtypes import code_book


def book(code: str) -> tuple[float, ...]:
    """A code book's values over its largest magnitude: the weight is book[code] * block absmax."""
    return tuple((torch.tensor(code_book(code).values, dtype=torch.float32) / code_book(code).levels).tolist())


@functools.lru_cache(maxsize=16)
def lut(code: str, device: torch.device) -> torch.Tensor:
    """int32 [24]: the code book as the kernels decode it (fp32 bits of the values to bf16 precision), then the
    eight table words of its in-register decoding (lut.py)."""
    values = torch.tensor(kernel_table(book(code)), dtype=torch.float32).view(torch.int32).tolist()
    words = [w - (1 << 32) if w >= 1 << 31 else w for w in table_words(book(code))]  # as int32
    return torch.tensor(values + words, dtype=torch.int32).to(device)


LOCKS = 1 << 16  # split-K tile counters per device; a launch needing more runs without split-K


@functools.lru_cache(maxsize=16)
def locks(device: torch.device) -> torch.Tensor:
    """Zeroed int32 counters for split-K tiles; each launch leaves the ones it used at zero again."""
    return torch.zeros(LOCKS, dtype=torch.int32, device=device)


def launch(x2: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, bias: torch.Tensor | None,
           tf: TritonFormat, cfg: dict, xs: torch.Tensor | None = None,
           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y [M, N] = x2 [M, K] @ W.T (+ bias) for the stored ``w``/``s``/``z`` of ``tf`` with one config.

    ``xs`` (dynamic fp8 only): per-row scales of an fp8 ``x2``.
    """
    from lowbit.kernels.triton.kernels import gemm_kernel, gemv_kernel

    group = tf.group
    m, k = x2.shape
    n = s.shape[0]
    chunks = k // 128
    gemv = cfg["path"] == "gemv"
    cpi = cfg["CPI"] if not gemv and chunks % cfg["CPI"] == 0 else 1  # the GEMV prefetches one chunk instead
    tiles = (m if gemv else triton_cdiv(m, cfg["BM"])) * triton_cdiv(n, cfg["BN"])
    split = max(d for d in range(1, cfg["SPLIT_K"] + 1) if (chunks // cpi) % d == 0)  # equal parts
    if tiles > LOCKS:
        split = 1
    device = x2.device
    out = torch.empty(m, n, dtype=out_dtype or x2.dtype, device=device)
    ws = torch.empty(split, m, n, dtype=torch.float32, device=device) if split > 1 else out
    table = lut(tf.code, device) if tf.family is Family.CODEBOOK else s
    common = dict(FMT=int(tf.family), GS=group or 1 << 30,  # per channel: every input in group 0
                  HAS_Z=z is not None, ZERO=8.0, HAS_BIAS=bias is not None, SPLIT=split,
                  num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    args = (x2, xs if xs is not None else s, w, s, z if z is not None else s, table,
            bias if bias is not None else s, out, ws, locks(device))
    ssn, ssg = (s.stride(0), s.stride(1)) if s.dim() == 2 else (1, 0)  # scales [N, groups], any strides
    if z is not None and z.stride() != s.stride():
        raise ValueError(f"zeros strides {z.stride()} differ from the scales' {s.stride()}; the kernel indexes both "
                         "alike (lay both out with the same function)")
    per = chunks // split
    if gemv:
        grid = (triton_cdiv(n, cfg["BN"]), m, split)
        gemv_kernel[grid](*args, m, n, k, ssn, ssg, x2.stride(0), out.stride(0), per, X_SCALED=xs is not None,
                          BN=cfg["BN"], ACC_W=16 if tf.four_bit else 128, PF=cfg.get("PF", 1), PD=cfg.get("PD", 1),
                          **common)
    else:
        grid = (triton_cdiv(m, cfg["BM"]), triton_cdiv(n, cfg["BN"]), split)
        # PK=0 (a tuner choice): int4 tiles decoded in fp32 even where the packed decode is exact
        packed_int4 = tf.family is Family.INT4 and cfg.get("PK", 1) and not cfg.get("FLAT")
        half, late = packed(x2, s, z, group) if packed_int4 else (0, 0)
        gemm_kernel[grid](*args, m, n, k, ssn, ssg, x2.stride(0), out.stride(0), per, X_FP8=xs is not None,
                          BM=cfg["BM"], BN=cfg["BN"], CPI=cpi, SWAP=cfg.get("SWAP", False),
                          FLAT=cfg.get("FLAT", 0), PACKED=half, LATE=late, **common)
    return out


def packed(x2: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, group: int) -> tuple[int, int]:
    """(PACKED, LATE) for the GEMM's int4 tiles: decoded two weights a register in x's dtype (1: bf16, 2: fp16;
    0: in fp32), and scaled after each chunk's product (LATE) when the scales are in another dtype, which needs
    one group per chunk. Zeros must be integers; Triton's interpreter cannot run the PTX."""
    half = {torch.bfloat16: 1, torch.float16: 2}.get(x2.dtype, 0)
    if interpreting() or not half or (z is not None and z.is_floating_point()):
        return 0, 0
    if s.dtype == x2.dtype:
        return half, 0
    return (half, 1) if not group or group >= 128 else (0, 0)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def quantize_rows_cuda(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``formats.fp8.quantize_rows`` of a contiguous [M, K] x in one Triton launch (the torch version is about ten
    kernels): (e4m3 codes [M, K], float32 scales [M, 1]), bit for bit the same."""
    import triton

    from lowbit.kernels.triton.rows import quantize_rows_kernel

    m, k = x2.shape
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x2.device)
    scales = torch.empty(m, 1, dtype=torch.float32, device=x2.device)
    block = min(4096, triton.next_power_of_2(k))
    quantize_rows_kernel[(m,)](x2, q, scales, k, x2.stride(0), BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return q, scales


def run(x2: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, bias: torch.Tensor | None,
        tf: TritonFormat, cfg: dict) -> torch.Tensor:
    """One layer call with one config: W8A8 quantizes the activations first."""
    if not tf.dynamic:
        return launch(x2, w, s, z, bias, tf, cfg)
    xq, xs = quantize_rows_cuda(x2)
    if cfg["path"] == "scaled_mm":
        y = torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=s.reshape(1, -1), out_dtype=x2.dtype)
        return y if bias is None else y + bias.to(y.dtype)
    return launch(xq, w, s, z, bias, tf, cfg, xs=xs.reshape(-1).contiguous(), out_dtype=x2.dtype)


def bench_gpu(fn, reps: int = 40) -> float:
    """Median GPU µs of ``fn()``: replayed from a CUDA graph (no Python launch cost in the number), the L2 cache
    flushed before each replay so weights come from memory as in a real forward."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps + 3)]
    for start, end in events:
        flush.zero_()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    times = sorted(1e3 * s.elapsed_time(e) for s, e in events[3:])
    return times[len(times) // 2]


def _measure(x2, w, s, z, bias, tf: TritonFormat, errors: list[str] | None = None):
    """For the tuner: a config → its median GPU µs (inf if it does not compile or run; why, into ``errors``)."""
    def measure(cfg: dict) -> float:
        try:
            return bench_gpu(lambda: run(x2, w, s, z, bias, tf, cfg))
        except Exception as e:  # out of shared memory or registers for this tile: not a candidate
            if errors is not None:
                errors.append(f"{type(e).__name__}: {e}"[:300])
            return float("inf")
    return measure


@torch.library.custom_op("lowbit::triton_linear", mutates_args=(),
                         device_types=("cuda", "cpu") if interpreting() else "cuda")
def triton_linear(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None,
                  bias: torch.Tensor | None, family: int, group: int, code: str, dynamic: bool) -> torch.Tensor:
    """``x @ W.T + bias`` for a weight stored as ``w``/``s``/``z`` in the Triton layout of
    ``TritonFormat(Family(family), group, code, dynamic)``."""
    tf = _format(family, group, code, dynamic)
    x2, lead = flat(x)
    x2 = x2.contiguous()
    n = s.shape[0]
    cfg = tune.config_for(tf, x.dtype, x2.shape[0], x2.shape[1], n, lambda: _measure(x2, w, s, z, bias, tf))
    other = x.device.index is not None and x.device.index != torch.cuda.current_device()
    with torch.cuda.device(x.device) if other else contextlib.nullcontext():  # Triton launches on the current device
        y = run(x2, w, s, z, bias, tf, cfg)
    return y.reshape(*lead, n)


@functools.lru_cache(maxsize=64)
def _format(family: int, group: int, code: str, dynamic: bool) -> TritonFormat:
    return TritonFormat(Family(family), group, code, dynamic)


@triton_linear.register_fake
def _(x, w, s, z, bias, family, group, code, dynamic):
    return fake_linear(x, s.shape[0])
