"""CPU kernels on torch's built-ins: ``_weight_int8pack_mm`` and ``_weight_int4pack_mm_for_cpu``.

Both are fast at small M (decode) with bf16/fp16 activations; with fp32 activations they are far slower
than a plain fp32 matmul on the same CPU (see benchmarks/cpu_linear.py), which is why the default compute
dtype on CPUs with bf16 units is bf16.
"""

from __future__ import annotations

import functools

import torch

from lowbit.formats import IntFormat, pack_bits, unpack_bits
from lowbit.kernels.base import Kernel, fake_linear, flat
from lowbit.qtypes import zero_to_float_offset

_HALF = (torch.bfloat16, torch.float16, torch.float32)
INT4_GROUPS = (32, 64, 128, 256)
INT8_DENSE_MIN_M = 128  # rows of activations from which int8 runs as convert + dense matmul


# Defined with torch.library.define/impl rather than custom_op: the dispatcher then calls the CPU
# implementation directly, which saves 10-20 µs a call at M=1 (benchmarks/cpu_linear.py).
torch.library.define("lowbit::int8_linear_cpu", "(Tensor x, Tensor weight, Tensor scales, Tensor? bias) -> Tensor")
torch.library.define("lowbit::int4_linear_cpu",
                     "(Tensor x, Tensor packed, Tensor scales_and_zeros, int group_size, Tensor? bias) -> Tensor")


@torch.library.impl("lowbit::int8_linear_cpu", "CPU")
def int8_linear_cpu(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ (weight * scales[:, None]).T``: int8 [N, K] weight, per-channel scales in x's dtype."""
    x2, lead = flat(x)
    if x2.shape[0] >= INT8_DENSE_MIN_M:
        # prefill: the built-in's time grows linearly with M; converting the codes once and using the
        # dense matmul is faster from here on (benchmarks/cpu_linear.py)
        y = torch.nn.functional.linear(x2, weight.to(x2.dtype)) * scales
    else:
        y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), weight, scales)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, weight.shape[0])


@torch.library.register_fake("lowbit::int8_linear_cpu")
def _(x, weight, scales, bias):
    return fake_linear(x, weight.shape[0])


@torch.library.impl("lowbit::int4_linear_cpu", "CPU")
def int4_linear_cpu(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """tinygemm form ``w = (q - 8) * s + m``; ``scales_and_zeros`` is [K / group, N, 2] in x's dtype."""
    x2, lead = flat(x)
    n = scales_and_zeros.shape[1]
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), packed, group_size, scales_and_zeros)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, n)


@torch.library.register_fake("lowbit::int4_linear_cpu")
def _(x, packed, scales_and_zeros, group_size, bias):
    return fake_linear(x, scales_and_zeros.shape[1])


_ROW_BLOCK = 64  # _convert_weight_to_int4pack_for_cpu permutes nibbles within blocks of 64 rows


@functools.lru_cache(maxsize=8)
def _source_positions(rows: int, k: int) -> torch.Tensor:
    """For a block of ``rows`` x ``k`` codes: the source index of every packed nibble (low nibble first).

    Found by converting the bits of each element's own index, four at a time, so the permutation is
    read from the built-in itself rather than assumed.
    """
    idx = torch.arange(rows * k, dtype=torch.int64).reshape(rows, k)
    where = torch.zeros(rows * k, dtype=torch.int64)
    shift = 0
    while (rows * k - 1) >> shift:
        plane = torch.ops.aten._convert_weight_to_int4pack_for_cpu(((idx >> shift) & 15).to(torch.int32), 1)
        where += torch.stack([plane & 15, plane >> 4], dim=-1).reshape(-1).to(torch.int64) << shift
        shift += 4
    return where


def unpack_int4pack_cpu(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of ``_convert_weight_to_int4pack_for_cpu``: packed [N, K/2] → uint8 codes [N, K]."""
    n = packed.shape[0]
    full = n - n % _ROW_BLOCK
    out = torch.empty(n, k, dtype=torch.uint8, device=packed.device)
    for start, stop, rows in ((0, full, _ROW_BLOCK), (full, n, n - full)):
        if stop == start:
            continue
        part = packed[start:stop]
        nibbles = torch.stack([part & 15, part >> 4], dim=-1).reshape(-1, rows * k)
        codes = torch.empty_like(nibbles)
        codes[:, _source_positions(rows, k)] = nibbles
        out[start:stop] = codes.reshape(stop - start, k)
    return out


def _pack_for_cpu(qweight: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """Canonical packed codes → the built-in's layout, 64 rows at a time (its permutation stays within
    blocks of 64 rows), so the int32 codes it wants never exist for the whole layer at once."""
    n, k = qweight.shape[0], qweight.shape[1] * 2
    rows = max(1, (1 << 20) // (k * _ROW_BLOCK)) * _ROW_BLOCK  # about 1M codes (4 MB of int32) at a time
    out = torch.empty_like(qweight)
    for start in range(0, n, rows):
        block = qweight[start:start + rows]
        codes = unpack_bits(block, 4).to(torch.int32)
        if symmetric:
            codes ^= 8  # tinygemm codes are unsigned with zero 8: a signed code c is c + 8
        out[start:start + block.shape[0]] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    return out


def _cpu_checks(device: torch.device, compute_dtype: torch.dtype) -> str | None:
    if device.type != "cpu":
        return f"device is {device.type}, this kernel runs on cpu"
    if compute_dtype not in _HALF:
        return f"compute dtype {compute_dtype} is not one of bf16/fp16/fp32"
    return None


class CpuInt8Kernel(Kernel):
    name = "cpu_int8"
    priority = 10

    def handles(self, fmt):
        return isinstance(fmt, IntFormat) and fmt.bits == 8

    def can_implement(self, fmt, device, shape, compute_dtype):
        why = _cpu_checks(device, compute_dtype)
        if why:
            return False, why
        if fmt.bits != 8 or fmt.group_size is not None or not fmt.symmetric:
            return False, f"needs int8 symmetric per-channel, got {fmt.describe()}"
        return True, (f"aten._weight_int8pack_mm (int8 per-channel); convert + dense matmul from "
                      f"M={INT8_DENSE_MIN_M}")

    def prepare(self, tensors, fmt, compute_dtype):
        # The canonical int8 codes are this kernel's layout already: only the scales change dtype.
        return {"scales": tensors["scales"].reshape(-1).to(compute_dtype)}

    def run(self, x, tensors, prepared, fmt, bias):
        return torch.ops.lowbit.int8_linear_cpu(x, tensors["qweight"], prepared["scales"], bias)


class CpuInt4Kernel(Kernel):
    name = "cpu_int4"
    priority = 10
    rebuilds_canonical = True

    def handles(self, fmt):
        return isinstance(fmt, IntFormat) and fmt.bits == 4

    def can_implement(self, fmt, device, shape, compute_dtype):
        why = _cpu_checks(device, compute_dtype)
        if why:
            return False, why
        n, k = shape
        if fmt.bits != 4 or fmt.group_size not in INT4_GROUPS:
            return False, f"needs int4 with group size in {INT4_GROUPS}, got {fmt.describe()}"
        if fmt.g_idx:
            return False, "needs groups of consecutive inputs, not a g_idx (GPTQ with static_groups=True gives them)"
        if n % 16:
            return False, f"N={n} is not a multiple of 16"
        return True, f"aten._weight_int4pack_mm_for_cpu (int4 g{fmt.group_size}, zero as float offset)"

    def prepare(self, tensors, fmt, compute_dtype):
        # tinygemm codes are unsigned with zero 8: a symmetric code c is c + 8 (flip the sign bit).
        packed = _pack_for_cpu(tensors["qweight"], fmt.symmetric)
        scales = tensors["scales"].float()
        zeros = tensors.get("zeros")
        offsets = torch.zeros_like(scales) if zeros is None else zero_to_float_offset(zeros, scales, fmt.qtype.midpoint)
        sz = torch.stack([scales.t(), offsets.t()], dim=-1).to(compute_dtype).contiguous()
        return {"packed": packed, "scales_and_zeros": sz}

    def canonical_from_prepared(self, prepared, fmt, shape):
        codes = unpack_int4pack_cpu(prepared["packed"], shape[1])
        if fmt.symmetric:
            codes ^= 8
        return {"qweight": pack_bits(codes, 4)}

    def run(self, x, tensors, prepared, fmt, bias):
        return torch.ops.lowbit.int4_linear_cpu(x, prepared["packed"], prepared["scales_and_zeros"], fmt.group_size, bias)
