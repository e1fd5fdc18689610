"""``lowbit::triton_linear``: the CUDA op behind the Triton kernels, and the launcher it calls.

The op is told the weight's :class:`~lowbit.kernels.triton.family.TritonFormat` as typed scalars (family, group,
code book, dynamic): ``INT4`` (zeros tensor given: asymmetric; none: symmetric codes stored + 8), ``CODEBOOK``
(nf4, fp4), ``INT8`` (symmetric per channel), ``FP8`` (per channel, weight-only; ``dynamic``: W8A8, activations
quantized per row at run time, then an fp8 x fp8 product through Triton or ``torch._scaled_mm``, whichever the
tuner found faster for the shape). Under Triton's interpreter the op runs on the CPU too.

The op is a ``torch.library.triton_op``: its kernels are launched through ``wrap_triton``, so torch.compile
traces them into its graph (inductor calls them from its own code and CUDA graphs) instead of calling an opaque
op. An eager call need not go through the op at all: ``eager`` is what ``TritonKernel.run`` calls outside
torch.compile when no gradient is asked for (the launcher's fast path, launcher.py).
"""

from __future__ import annotations

import functools

import torch
from torch._subclasses.fake_tensor import is_fake

from lowbit.kernels.base import flat
from lowbit.kernels.triton import tune
from lowbit.kernels.triton.family import Family, TritonFormat
from lowbit.kernels.triton.launcher import LOCKS, launch, linear, locks, lut, on_device  # noqa: F401


def quantize_rows_cuda(x2: torch.Tensor, via=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``formats.fp8.quantize_rows`` of a contiguous [M, K] x in one Triton launch (the torch version is about ten
    kernels): (e4m3 codes [M, K], float32 scales [M, 1]), bit for bit the same."""
    import triton

    from lowbit.kernels.triton.rows import quantize_rows_kernel

    m, k = x2.shape
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x2.device)
    scales = torch.empty(m, 1, dtype=torch.float32, device=x2.device)
    block = min(4096, triton.next_power_of_2(k))
    kernel = via(quantize_rows_kernel) if via is not None else quantize_rows_kernel
    kernel[(m,)](x2, q, scales, k, x2.stride(0), BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return q, scales


def run(x2: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, bias: torch.Tensor | None,
        tf: TritonFormat, cfg: dict, via=None) -> torch.Tensor:
    """One layer call with one config: W8A8 quantizes the activations first. ``via``: see ``launcher.launch``."""
    if not tf.dynamic:
        return launch(x2, w, s, z, bias, tf, cfg, via=via)
    xq, xs = quantize_rows_cuda(x2, via)
    if cfg["path"] == "scaled_mm":
        y = torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=s.reshape(1, -1), out_dtype=x2.dtype)
        return y if bias is None else y + bias.to(y.dtype)
    return launch(xq, w, s, z, bias, tf, cfg, xs=xs.reshape(-1).contiguous(), out_dtype=x2.dtype, via=via)


def bench_gpu(fn, reps: int = 40, read_flush: bool = False) -> float:
    """Median GPU µs of ``fn()``: replayed from a CUDA graph (no Python launch cost in the number), the L2 cache
    flushed before each replay so weights come from memory as in a real forward: by writing 256 MB, or with
    ``read_flush`` by reading them (the L2 then holds clean lines, not up to 50 MB to write back first)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    flush = torch.ones(64 << 20, dtype=torch.int32, device="cuda")
    sink = torch.empty((), dtype=torch.int64, device="cuda")
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps + 3)]
    for start, end in events:
        if read_flush:
            torch.sum(flush, dim=0, out=sink)
        else:
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


@torch.library.triton_op("lowbit::triton_linear", mutates_args=())
def triton_linear(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None,
                  bias: torch.Tensor | None, family: int, group: int, code: str, dynamic: bool) -> torch.Tensor:
    """``x @ W.T + bias`` for a weight stored as ``w``/``s``/``z`` in the Triton layout of
    ``TritonFormat(Family(family), group, code, dynamic)``."""
    tf = _format(family, group, code, dynamic)
    x2, lead = flat(x)
    x2 = x2.contiguous()
    n = s.shape[0]
    traced = is_fake(x)  # torch.compile (or a fake-tensor check) is tracing the op: never tune there
    cfg = tune.config_for(tf, x.dtype, x2.shape[0], x2.shape[1], n,
                          None if traced else lambda: _measure(x2, w, s, z, bias, tf))
    with on_device(x.device):  # Triton launches on the current device
        y = run(x2, w, s, z, bias, tf, cfg, via=torch.library.wrap_triton)
    return y.reshape(*lead, n)


def eager(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, bias: torch.Tensor | None,
          tf: TritonFormat) -> torch.Tensor:
    """What ``lowbit::triton_linear`` computes, for a plain eager call: no dispatch, one plan per shape."""
    if tf.dynamic:
        return torch.ops.lowbit.triton_linear(x, w, s, z, bias, *tf.op_args())
    return linear(x, w, s, z, bias, tf, lambda x2: _measure(x2, w, s, z, bias, tf))


@functools.lru_cache(maxsize=64)
def _format(family: int, group: int, code: str, dynamic: bool) -> TritonFormat:
    return TritonFormat(Family(family), group, code, dynamic)
