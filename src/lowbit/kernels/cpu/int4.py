"""``cpu_int4``: int4 grouped weights through torch's tinygemm CPU kernel ``_weight_int4pack_mm_for_cpu``."""

from __future__ import annotations

import functools

import torch

from lowbit.formats import pack_bits, unpack_bits
from lowbit.kernels.base import Kernel, fake_linear, flat
from lowbit.kernels.cpu.features import cpu_declines
from lowbit.qtypes import zero_to_float_offset

INT4_GROUPS = (32, 64, 128, 256)

torch.library.define("lowbit::int4_linear_cpu",
                     "(Tensor x, Tensor packed, Tensor scales_and_zeros, int group_size, Tensor? bias) -> Tensor")


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


def pack_for_cpu(qweight: torch.Tensor, symmetric: bool) -> torch.Tensor:
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


class CpuInt4Kernel(Kernel):
    name = "cpu_int4"
    priority = 10
    rebuilds_canonical = True

    def handles(self, request):
        return request.kind == "int" and request.bits == 4

    def can_implement(self, request):
        why = cpu_declines(request)
        if why:
            return False, why
        if request.group_size not in INT4_GROUPS:
            return False, f"needs int4 with group size in {INT4_GROUPS}, got {request.fmt.describe()}"
        if request.g_idx:
            return False, "needs groups of consecutive inputs, not a g_idx (GPTQ with static_groups=True gives them)"
        if request.n % 16:
            return False, f"N={request.n} is not a multiple of 16"
        return True, f"aten._weight_int4pack_mm_for_cpu (int4 g{request.group_size}, zero as float offset)"

    def prepare(self, tensors, request):
        # tinygemm codes are unsigned with zero 8: a symmetric code c is c + 8 (flip the sign bit).
        packed = pack_for_cpu(tensors["qweight"], request.symmetric)
        scales = tensors["scales"].float()
        zeros = tensors.get("zeros")
        offsets = torch.zeros_like(scales) if zeros is None else zero_to_float_offset(zeros, scales,
                                                                                      request.qtype.midpoint)
        sz = torch.stack([scales.t(), offsets.t()], dim=-1).to(request.compute_dtype).contiguous()
        return {"packed": packed, "scales_and_zeros": sz}

    def canonical_from_prepared(self, prepared, request):
        codes = unpack_int4pack_cpu(prepared["packed"], request.k)
        if request.symmetric:
            codes ^= 8
        return {"qweight": pack_bits(codes, 4)}

    def run(self, x, tensors, prepared, request, bias):
        return torch.ops.lowbit.int4_linear_cpu(x, prepared["packed"], prepared["scales_and_zeros"],
                                                request.group_size, bias)
