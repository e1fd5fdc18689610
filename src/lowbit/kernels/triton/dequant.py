"""int4 weights dequantized to x's dtype in one launch, then one cuBLAS product (the tuner's ``dequant`` path).

The fused GEMM (``kernels.gemm_kernel``) decodes each weight tile once per block of rows of x, and at large M its
tensor cores wait on that decoding: on an H100 it ran at 0.45-0.60x bf16 at M = 256. Writing the whole weight out in
x's dtype costs one pass over it (the packed words read, 2 bytes a weight written), after which the product is
bf16's own. The tuner times both for each (shape, M bucket) and keeps the faster. The weight made is each
``(q - z) * s`` in fp32, rounded once to x's dtype, as the reference op's ``decode`` makes it, so the result is the
reference op's bit for bit. Inside the op its buffer lives for the one call; eager calls (``launcher.Bound``) share
one buffer per device and dtype, as large as the largest layer's weight in x's dtype, and launch the compiled
kernel directly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BN = 64  # rows a program; each program writes one chunk of 128 inputs of them
WARPS = 4


@triton.jit
def dequant4_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, K, stride_sn, stride_sg,
                    GS: tl.constexpr, HAS_Z: tl.constexpr, ZERO: tl.constexpr, BN: tl.constexpr):
    pid_n = tl.program_id(0)
    c = tl.program_id(1)  # the chunk of 128 inputs
    rows = pid_n * BN + tl.arange(0, BN)
    safe = tl.minimum(rows, N - 1)
    j = tl.arange(0, 16)
    # layout.py: rows in blocks of 16, a block's chunks in order, a chunk 16 rows x 16 words
    words = tl.load(w_ptr + ((safe // 16) * (2 * K) + c * 256 + (safe % 16) * 16)[:, None] + j[None, :])
    out_rows = out_ptr + rows.to(tl.int64)[:, None] * K
    mask = (rows < N)[:, None]
    for i in tl.static_range(8):  # nibble i of word j: input c * 128 + i * 16 + j, in one group (16 | GS)
        g = (c * 128 + i * 16) // GS
        s = tl.load(s_ptr + safe * stride_sn + g * stride_sg).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + safe * stride_sn + g * stride_sg).to(tl.float32)
        else:
            z = tl.zeros_like(s) + ZERO
        q = ((words >> (4 * i)) & 15).to(tl.float32)
        w = (q - z[:, None]) * s[:, None]
        tl.store(out_rows + (c * 128 + i * 16 + j)[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


def launch_args(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, group: int, k: int,
                out: torch.Tensor) -> tuple[tuple[int, int], tuple, dict]:
    """(grid, arguments, constexprs) of the launch that writes the [N, K] weight into ``out``."""
    n = s.shape[0]
    ssn, ssg = (s.stride(0), s.stride(1)) if s.dim() == 2 else (1, 0)
    consts = dict(GS=group or 1 << 30, HAS_Z=z is not None, ZERO=8.0, BN=BN)
    return (triton.cdiv(n, BN), k // 128), (w, s, z if z is not None else s, out, n, k, ssn, ssg), consts


def dequantize4(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, group: int, k: int, dtype: torch.dtype,
                via=None, out: torch.Tensor | None = None):
    """The [N, K] weight in ``dtype`` from the int4 kernel layout (``group`` 0: per channel), into ``out`` if given;
    ``via`` as in ``launcher.launch``. Returns (weight, the compiled kernel, or what ``via`` returns)."""
    out = torch.empty(s.shape[0], k, dtype=dtype, device=w.device) if out is None else out
    grid, args, consts = launch_args(w, s, z, group, k, out)
    kernel = via(dequant4_kernel) if via is not None else dequant4_kernel
    return out, kernel[grid](*args, **consts, num_warps=WARPS)
