"""The int4 GEMV for one group a row per chunk of 128 inputs (groups of 128 or a multiple, or per channel).

Same grid (row blocks x M x split-K), weight layout and split-K reduction as ``kernels.gemv_kernel``, with the
weights loaded ``evict_first`` (read once) and a choice of decode (``DEC``, a tuner choice):

- ``DEC=0``: nibble i moved to bits 19..22 of 1.0's mantissa, the float ``1 + q/16``: a shift and a ``lop3`` per
  weight, then one FMA, as gemv_kernel does.
- ``DEC=1``: the nibbles taken where four shifts of the word put them, at bits 16..19 or 12..15 (the floats
  ``1 + q 2^-7`` and ``1 + q 2^-11``), each slab of x scaled by ``2^7`` or ``2^11`` to match (exact): 12 integer
  operations for 8 weights instead of 16. ``sum f x' = sum x' + sum q x``, so the sum of ``x'`` is subtracted
  and the zero term uses the sum of x; the large ``x'`` terms cost about 2^-11 of fp32's precision, far below
  the bf16 output's rounding.

``PD=1`` requests chunk it + 1 (words, scales, zeros) into registers while chunk it is computed; ``PD=0`` leaves
the loads in the loop. A tensor-core variant (pairs of nibbles decoded to bf16 ``128 + q`` by one ``lop3``,
multiplied by x on ``wgmma``) measured 1.3-1.7x slower on an H100 and is not kept.
"""

from __future__ import annotations

import triton
import triton.language as tl

from lowbit.kernels.triton.kernels import ASM, _finish


# (t & mask) | the bits of 1.0f, as fp32.
@triton.jit
def _bits(t, mask: tl.constexpr):
    if ASM:
        if mask == 0xF0000:
            b = tl.inline_asm_elementwise("lop3.b32 $0, $1, 983040, 1065353216, 234;", "=r,r", [t],
                                          dtype=tl.int32, is_pure=True, pack=1)
        elif mask == 0xF000:
            b = tl.inline_asm_elementwise("lop3.b32 $0, $1, 61440, 1065353216, 234;", "=r,r", [t],
                                          dtype=tl.int32, is_pure=True, pack=1)
        else:
            b = tl.inline_asm_elementwise("lop3.b32 $0, $1, 7864320, 1065353216, 234;", "=r,r", [t],
                                          dtype=tl.int32, is_pure=True, pack=1)
    else:
        b = (t & mask) | 0x3F800000
    return b.to(tl.float32, bitcast=True)


# Chunk c's words [BN, 16] and its scales and zeros [BN] (fp32; the zeros are the scales where HAS_Z is off).
@triton.jit
def _chunk(w_at, s_at, z_at, c, stride_sg, GS: tl.constexpr, HAS_Z: tl.constexpr, EV: tl.constexpr):
    if EV:
        words = tl.load(w_at + c * 256, eviction_policy="evict_first")
    else:
        words = tl.load(w_at + c * 256)
    g = (c * 128) // GS
    s = tl.load(s_at + g * stride_sg).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_at + g * stride_sg).to(tl.float32)
    else:
        z = s
    return words, s, z


# DEC=1's slab i: nibble i where a shift of <<16, <<8, none, >>8 or >>12 puts it (each computed once), at bits
# 12..15 for i = 1, 3, 5 (the float 1 + q 2^-11, x times 2^11) or 16..19 (1 + q 2^-7, x times 2^7).
@triton.jit
def _slab(words, xv, i: tl.constexpr):
    if i == 1 or i == 3 or i == 5:
        if i == 1:
            t = words << 8
        elif i == 3:
            t = words
        else:
            t = words >> 8
        f = _bits(t, 0xF000)
        xv = xv * 2048.0
    else:
        if 16 - 4 * i >= 0:
            t = words << (16 - 4 * i)
        else:
            t = words >> (4 * i - 16)
        f = _bits(t, 0xF0000)
        xv = xv * 128.0
    return f, xv


# One chunk's contribution to the rows' sums: s (sum q x) - z s (sum x), as DEC decodes it.
@triton.jit
def _acc(words, s, z, c, x_row, j, HAS_Z: tl.constexpr, ZERO: tl.constexpr, DEC: tl.constexpr):
    if not HAS_Z:
        z = ZERO
    part = tl.zeros((words.shape[0], 16), dtype=tl.float32)
    xsum = tl.zeros((16,), dtype=tl.float32)
    if DEC == 0:
        for i in tl.static_range(8):
            xv = tl.load(x_row + c * 128 + i * 16 + j).to(tl.float32)
            if 4 * i <= 19:
                t = words << (19 - 4 * i)
            else:
                t = words >> (4 * i - 19)
            part += _bits(t, 0x780000) * xv[None, :]
            xsum += xv
        y = (16.0 * s) * tl.sum(part, axis=1) - ((16.0 + z) * s) * tl.sum(xsum, axis=0)
    else:
        xs = tl.zeros((16,), dtype=tl.float32)
        for i in tl.static_range(8):
            xv = tl.load(x_row + c * 128 + i * 16 + j).to(tl.float32)
            xs += xv
            f, xv = _slab(words, xv, i)
            part += f * xv[None, :]
            xsum += xv
        # sum f x' = sum x' + sum q x (x' = x 2^e): xsum is the sum of x', xs the sum of x
        y = s * (tl.sum(part, axis=1) - tl.sum(xsum, axis=0)) - (z * s) * tl.sum(xs, axis=0)
    return y


@triton.jit(do_not_specialize=["M", "N", "chunks_per_split"])
def gemv4_kernel(x_ptr, xs_ptr, w_ptr, s_ptr, z_ptr, lut_ptr, b_ptr, out_ptr, ws_ptr, lock_ptr,
                 M, N, K, stride_sn, stride_sg, stride_xm, stride_om, chunks_per_split,
                 GS: tl.constexpr, HAS_Z: tl.constexpr, ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
                 SPLIT: tl.constexpr, BN: tl.constexpr, DEC: tl.constexpr, EV: tl.constexpr, PD: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    pid_k = tl.program_id(2)
    rows = pid_n * BN + tl.arange(0, BN)
    safe_rows = tl.minimum(rows, N - 1)
    j = tl.arange(0, 16)
    c0 = pid_k * chunks_per_split
    x_row = x_ptr + m.to(tl.int64) * stride_xm
    w_rows = tl.multiple_of((safe_rows // 16) * (2 * K) + (safe_rows % 16) * 16, 16)
    w_at = w_ptr + w_rows[:, None] + j[None, :]
    s_at = s_ptr + safe_rows * stride_sn
    z_at = z_ptr + safe_rows * stride_sn
    y = tl.zeros((BN,), dtype=tl.float32)
    if PD:  # chunk it + 1 (words, scales, zeros) requested while chunk it is computed
        words, s, z = _chunk(w_at, s_at, z_at, c0, stride_sg, GS, HAS_Z, EV)
        for it in range(0, chunks_per_split - 1):
            w_next, s_next, z_next = _chunk(w_at, s_at, z_at, c0 + it + 1, stride_sg, GS, HAS_Z, EV)
            y += _acc(words, s, z, c0 + it, x_row, j, HAS_Z, ZERO, DEC)
            words, s, z = w_next, s_next, z_next
        y += _acc(words, s, z, c0 + chunks_per_split - 1, x_row, j, HAS_Z, ZERO, DEC)
    else:
        for it in range(0, chunks_per_split):
            words, s, z = _chunk(w_at, s_at, z_at, c0 + it, stride_sg, GS, HAS_Z, EV)
            y += _acc(words, s, z, c0 + it, x_row, j, HAS_Z, ZERO, DEC)
    offs_m = m + tl.arange(0, 1)
    _finish(y[None, :], offs_m, rows, m * tl.num_programs(0) + pid_n, M, N, out_ptr, stride_om, b_ptr,
            ws_ptr, lock_ptr, HAS_BIAS, SPLIT)
