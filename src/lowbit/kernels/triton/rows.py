"""W8A8's per-row fp8 quantization of the activations in one Triton launch (imported on the first fp8dyn call)."""

from __future__ import annotations

import triton
import triton.language as tl


# One row of x per program → e4m3 codes and a float32 scale, as ``formats.fp8.quantize_rows`` computes them
# on CUDA (amax / 448, which torch computes as amax * fp32(1/448), 1 for an all-zero row; x / scale rounded to
# nearest, clamped to ±448), in one launch.
@triton.jit
def quantize_rows_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, BLOCK: tl.constexpr):
    m = tl.program_id(0)
    row = x_ptr + m.to(tl.int64) * stride_xm
    out = q_ptr + m.to(tl.int64) * K
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        amax = tl.maximum(amax, tl.abs(tl.load(row + k, mask=k < K, other=0.0).to(tl.float32)))
    a = tl.max(amax, axis=0)
    scale = tl.where(a > 0, a * (1.0 / 448.0), 1.0)
    tl.store(s_ptr + m, scale)
    for k0 in range(0, K, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        v = tl.math.div_rn(tl.load(row + k, mask=k < K, other=0.0).to(tl.float32), scale)
        v = tl.minimum(tl.maximum(v, -448.0), 448.0)
        tl.store(out + k, v.to(tl.float8e4nv), mask=k < K)
