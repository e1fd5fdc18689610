"""The Triton kernels (imported only when a CUDA layer runs; this module needs triton).

Both kernels walk K in chunks of 128 inputs; ``_weights`` turns one chunk of ``BN`` rows into fp32 weights
[BN, 8, 16] (input ``c*128 + i*16 + j``), dequantized in registers:

- INT4: 4-bit codes from the chunked word layout (layout.py); ``f = bits(0x44800000 | q << 13)`` is the float
  ``1024 + q`` without an int-to-float conversion (a slow instruction), and ``f * s - (1024 + z) * s`` is
  ``(q - z) * s`` computed as one fma from exact operands. Zeros: uint8 or float (HQQ) tensors, or the
  constant ``ZERO`` (symmetric codes are stored + 8).
- NF4 / FP4: the same codes index a 16-entry table (code value / code-book maximum) times the block absmax.
- INT8 / FP8: bytes of the canonical [N, K] rows; ``bits(0x44900000 + c << 13) - 1152`` is the int8 code c; the
  per-channel scale multiplies the finished sums.

``gemv_kernel``: one activation row per program (grid: row blocks x M x split-K), FMA in fp32 on 2-D tiles
(no reshapes: 4-bit chunks as 8 slabs of [BN, 16]), weights read once per row of x (meant for M <= 4). ``gemm_kernel``: tensor cores (``tl.dot``) on [BM, 128] x [128, BN]
tiles, the weight tile dequantized to x's dtype (or fp8 x fp8 for W8A8). With split-K > 1 both add fp32
partial sums into a zeroed buffer with atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

INT4 = tl.constexpr(0)
NF4 = tl.constexpr(1)
INT8 = tl.constexpr(2)
FP8 = tl.constexpr(3)


@triton.jit
def _weights(w_ptr, s_ptr, z_ptr, lut_ptr, rows, c, K, G,
             FMT: tl.constexpr, GS: tl.constexpr, HAS_Z: tl.constexpr, ZERO: tl.constexpr):
    i = tl.arange(0, 8)
    j = tl.arange(0, 16)
    if FMT == INT4 or FMT == NF4:
        words = tl.load(w_ptr + rows[:, None] * (K // 8) + c * 16 + j[None, :])  # [BN, 16] int32
        q = (words[:, None, :] >> (4 * i)[None, :, None]) & 15  # [BN, 8, 16]
        sidx = rows[:, None, None] * G + ((c * 128 + i * 16) // GS)[None, :, None]  # [BN, 8, 1]
        s = tl.load(s_ptr + sidx).to(tl.float32)
        if FMT == INT4:
            if HAS_Z:
                z = tl.load(z_ptr + sidx).to(tl.float32)
            else:
                z = ZERO
            f = ((q << 13) | 0x44800000).to(tl.float32, bitcast=True)
            w = f * s + (-(1024.0 + z) * s)
        else:
            w = tl.load(lut_ptr + q) * s
    else:
        t = i[:, None] * 16 + j[None, :]
        b = tl.load(w_ptr + rows[:, None, None] * K + c * 128 + t[None, :, :])  # [BN, 8, 16] bytes
        if FMT == INT8:
            w = ((b.to(tl.int32) << 13) + 0x44900000).to(tl.float32, bitcast=True) - 1152.0
        else:
            w = b.to(tl.float32)
    return w


@triton.jit(do_not_specialize=["N", "chunks_per_split"])
def gemv_kernel(x_ptr, xs_ptr, w_ptr, s_ptr, z_ptr, lut_ptr, b_ptr, out_ptr,
                N, K, G, stride_xm, stride_om, chunks_per_split,
                FMT: tl.constexpr, GS: tl.constexpr, HAS_Z: tl.constexpr, ZERO: tl.constexpr,
                X_SCALED: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
                BN: tl.constexpr, CPI: tl.constexpr, ACC_W: tl.constexpr):
    # 2-D tiles only: 4-bit formats walk a chunk as 8 slabs of [BN, 16] (nibble i of the [BN, 16] word tile
    # meets x[i*16 : i*16+16]); byte formats take the [BN, 128] chunk at once. ACC_W is 16 or 128 accordingly.
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    pid_k = tl.program_id(2)
    rows = pid_n * BN + tl.arange(0, BN)
    row_mask = rows < N
    safe_rows = tl.minimum(rows, N - 1)  # loads stay in bounds; the store masks
    j = tl.arange(0, ACC_W)
    acc = tl.zeros((BN, ACC_W), dtype=tl.float32)
    c0 = pid_k * chunks_per_split  # the launcher splits K into equal parts
    x_row = x_ptr + m.to(tl.int64) * stride_xm
    for cc in range(0, chunks_per_split, CPI):
        for u in tl.static_range(CPI):
            c = c0 + cc + u
            if FMT == INT4 or FMT == NF4:
                words = tl.load(w_ptr + safe_rows[:, None] * (K // 8) + c * 16 + j[None, :])
                for i in tl.static_range(8):
                    if (i * 16) % GS == 0:  # a group starts here: its scale (and zero)
                        sidx = safe_rows * G + (c * 128 + i * 16) // GS
                        s = tl.load(s_ptr + sidx).to(tl.float32)
                        if FMT == INT4:
                            if HAS_Z:
                                off = -(1024.0 + tl.load(z_ptr + sidx).to(tl.float32)) * s
                            else:
                                off = -(1024.0 + ZERO) * s
                    q = (words >> (4 * i)) & 15
                    if FMT == INT4:
                        w = ((q << 13) | 0x44800000).to(tl.float32, bitcast=True) * s[:, None] + off[:, None]
                    else:
                        w = tl.load(lut_ptr + q) * s[:, None]
                    xv = tl.load(x_row + c * 128 + i * 16 + j).to(tl.float32)
                    acc += w * xv[None, :]
            else:
                b = tl.load(w_ptr + safe_rows[:, None] * K + c * 128 + j[None, :])
                if FMT == INT8:
                    w = ((b.to(tl.int32) << 13) + 0x44900000).to(tl.float32, bitcast=True) - 1152.0
                else:
                    w = b.to(tl.float32)
                xv = tl.load(x_row + c * 128 + j).to(tl.float32)
                acc += w * xv[None, :]
    y = tl.sum(acc, axis=1)
    if X_SCALED:
        y = y * tl.load(xs_ptr + m)
    if FMT == INT8 or FMT == FP8:
        y = y * tl.load(s_ptr + safe_rows)
    out = out_ptr + m.to(tl.int64) * stride_om + rows
    if ATOMIC:
        tl.atomic_add(out, y, mask=row_mask)
    else:
        if HAS_BIAS:
            y = y + tl.load(b_ptr + safe_rows).to(tl.float32)
        tl.store(out, y.to(out_ptr.dtype.element_ty), mask=row_mask)


@triton.jit(do_not_specialize=["M", "N", "chunks_per_split"])
def gemm_kernel(x_ptr, xs_ptr, w_ptr, s_ptr, z_ptr, lut_ptr, b_ptr, out_ptr,
                M, N, K, G, stride_xm, stride_om, chunks_per_split,
                FMT: tl.constexpr, GS: tl.constexpr, HAS_Z: tl.constexpr, ZERO: tl.constexpr,
                X_FP8: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, CPI: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BM + tl.arange(0, BM)
    rows = pid_n * BN + tl.arange(0, BN)
    safe_m = tl.minimum(offs_m, M - 1).to(tl.int64)
    safe_rows = tl.minimum(rows, N - 1)
    kk = tl.arange(0, 128)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    c0 = pid_k * chunks_per_split  # the launcher splits K into equal parts
    for cc in range(0, chunks_per_split, CPI):
        c = c0 + cc
        for u in tl.static_range(CPI):
            xt = tl.load(x_ptr + safe_m[:, None] * stride_xm + (c + u) * 128 + kk[None, :])
            if X_FP8:
                wt = tl.load(w_ptr + safe_rows[:, None] * K + (c + u) * 128 + kk[None, :])
            else:
                w = _weights(w_ptr, s_ptr, z_ptr, lut_ptr, safe_rows, c + u, K, G, FMT, GS, HAS_Z, ZERO)
                wt = tl.reshape(w, (BN, 128)).to(xt.dtype)
            if X_FP8:
                acc = tl.dot(xt, tl.trans(wt), acc, max_num_imprecise_acc=32)  # fp32 sums every 32 products
            else:
                acc = tl.dot(xt, tl.trans(wt), acc)
    if X_FP8:
        acc = acc * tl.load(xs_ptr + safe_m)[:, None]
    if FMT == INT8 or FMT == FP8:
        acc = acc * tl.load(s_ptr + safe_rows)[None, :]
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + rows[None, :]
    mask = (offs_m < M)[:, None] & (rows < N)[None, :]
    if ATOMIC:
        tl.atomic_add(out, acc, mask=mask)
    else:
        if HAS_BIAS:
            acc = acc + tl.load(b_ptr + safe_rows).to(tl.float32)[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)
