"""``cpu_dot4`` and ``cpu_dot8``: small-M CPU kernels on integer dot products (``dot8.c``), as llama.cpp runs its
Q4_0/Q8_0 layers: each row of activations is rounded to int8 per block of ``block`` inputs (absmax scaling), then
multiplied with the weights' own codes by AVX2 ``vpmaddubsw`` or AVX512-VNNI ``vpdpbusd``, in int32.

This is not bit-exact with the fp32-activation kernels (``cpu_gemv4``/``cpu_gemv8``): the rounding of the activations
is the price of 2-4x fewer instructions per weight. Their static priority is below those kernels, so with the CPU
tuner off (``LOWBIT_CPU_TUNE=0``) lowbit keeps fp32 activations; the tuner picks these where they are fastest.

4-bit layers are repacked at ``prepare`` into 16 bytes per 32 inputs, byte j holding input j (low nibble) and input
j + 16 (high nibble); integer grids keep their codes (symmetric ones flipped to unsigned with an offset, as in
``gemv``), code books become a 16-entry int8 table ``table * mult``, where ``mult`` makes every entry an integer
(FP4, MXFP4). NF4 has no such form: rounded to int8 (``127 / max|table|``) it cost 1.6% perplexity on SmolLM2-135M
(27.43 → 27.88, against 0.2-0.4% for the activations' rounding alone), so these kernels decline it and it keeps
``cpu_gemv4``. 8-bit layers keep ``gemv``'s prepared form.
"""

from __future__ import annotations

import functools

import torch

from lowbit.formats import IntFormat
from lowbit.formats.intgroup import pack_bits, unpack_bits
from lowbit.kernels.base import fake_linear
from lowbit.kernels.cpu import native
from lowbit.kernels.cpu.step import NativeCall
from lowbit.kernels.cpu.gemv import (DENSE_MIN_M, ROWS, CpuGemv4Kernel, CpuGemv8Kernel, _table, deinterleave,
                                     dequantized_matmul, dequantized_rows, dequantized_rows8, eager_or_op, interleave,
                                     native_finish, native_io)
from lowbit.kernels.request import Activations

CHUNK = 32  # inputs per packed 16-byte chunk, and the smallest activation block
BLOCKS = (64, 32)  # activation blocks tried, largest first: the largest dividing the weight group is used

torch.library.define("lowbit::dot4_cpu", "(Tensor x, Tensor codes, Tensor? table, Tensor scales, Tensor? offsets, "
                                         "int group, int block, Tensor? bias) -> Tensor")
torch.library.define("lowbit::dot8_cpu", "(Tensor x, Tensor codes, Tensor scales, Tensor? offsets, int group, "
                                         "int block, Tensor? bias) -> Tensor")


def block_for(group: int) -> int | None:
    """The activation block for a weight group of ``group`` inputs (None: no block divides it)."""
    return next((b for b in BLOCKS if group % b == 0), None)


def to_chunks(codes: torch.Tensor) -> torch.Tensor:
    """[N, K/2] bytes, low nibble first → [N, K/2] bytes, 32 inputs per 16 bytes (input j low, j + 16 high)."""
    return chunks_of(torch.stack([codes & 15, codes >> 4], dim=-1).reshape(codes.shape[0], -1))


def chunks_of(values: torch.Tensor) -> torch.Tensor:
    """[N, K] codes 0..15 → [N, K/2] chunked bytes."""
    v = values.to(torch.uint8).reshape(values.shape[0], -1, 2, 16)
    return (v[:, :, 0] | (v[:, :, 1] << 4)).reshape(values.shape[0], -1).contiguous()


def from_chunks(chunks: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_chunks``."""
    v = chunk_values(chunks).reshape(chunks.shape[0], -1, 2)
    return (v[..., 0] | (v[..., 1] << 4)).contiguous()


def chunk_values(chunks: torch.Tensor) -> torch.Tensor:
    """[N, K/2] chunked bytes → [N, K] codes (uint8) in input order."""
    b = chunks.reshape(chunks.shape[0], -1, 16)
    return torch.cat([b & 15, b >> 4], dim=-1).reshape(chunks.shape[0], -1)


@functools.lru_cache(maxsize=32)
def int8_table(fmt) -> tuple[torch.Tensor | None, float, bool]:
    """(16 int8 table values, the multiplier they carry, exact?) for a code-book format; (None, 1, True) for grids."""
    table = _table(fmt)
    if table is None:
        return None, 1.0, True
    top = table.abs().max().item()
    for mult in range(1, int(127 // top) + 1):
        scaled = table * mult
        if torch.equal(scaled, scaled.round()):
            return scaled.to(torch.int8), float(mult), True
    mult = 127.0 / top
    return (table * mult).round().to(torch.int8), mult, False


def _run(fn, x, n, bias, *args):
    xf, m, y = native_io(x, n)
    k = xf.shape[-1]
    if fn(xf.data_ptr(), m, k, *args, y.data_ptr(), native.threads_for(n, k)):
        raise MemoryError(f"lowbit's CPU kernel could not allocate {m} x {k} int8 activations")
    return native_finish(y, bias, x.dtype)


def dot4_cpu(x, codes, table, scales, offsets, group, block, bias):
    """``x @ W.T`` for ``W = table[codes] * scales + offsets`` per group (codes chunked, see ``to_chunks``, and
    interleaved by ``ROWS`` rows)."""
    n, k = scales.shape[0], x.shape[-1]
    if x.numel() // k >= DENSE_MIN_M:
        values = None if table is None else table.float()
        return dequantized_matmul(x, n, lambda r0, r1: dequantized_rows(codes, values, scales, offsets, group, r0, r1,
                                                                         split=True), bias)
    return _run(native.library().lowbit_dot4, x, n, bias, codes.data_ptr(), n, native.ptr(table), scales.data_ptr(),
                native.ptr(offsets), group, block)


def dot8_cpu(x, codes, scales, offsets, group, block, bias):
    """``x @ W.T`` for ``W = codes * scales + offsets`` per group; codes int8 [N, K] interleaved by ``ROWS`` rows."""
    n, k = scales.shape[0], x.shape[-1]
    if x.numel() // k >= DENSE_MIN_M:
        return dequantized_matmul(x, n, lambda r0, r1: dequantized_rows8(codes, scales, offsets, group, r0, r1,
                                                                          interleaved=True), bias)
    return _run(native.library().lowbit_dot8, x, n, bias, codes.data_ptr(), n, scales.data_ptr(), native.ptr(offsets),
                group, block)


torch.library.impl("lowbit::dot4_cpu", "CPU")(dot4_cpu)
torch.library.impl("lowbit::dot8_cpu", "CPU")(dot8_cpu)


@torch.library.register_fake("lowbit::dot4_cpu")
def _(x, codes, table, scales, offsets, group, block, bias):
    return fake_linear(x, scales.shape[0])


@torch.library.register_fake("lowbit::dot8_cpu")
def _(x, codes, scales, offsets, group, block, bias):
    return fake_linear(x, scales.shape[0])


class _DotMixin:
    """What both integer-dot kernels add to their fp32-activation counterparts."""

    priority = 14  # below cpu_gemv4/8: chosen by the tuner's measurement, not by default
    row_block = ROWS  # fused members start on a block of interleaved rows

    def can_implement(self, request):
        if request.activations is not Activations.NONE:
            return False, "the format quantizes activations at run time (the reference kernel runs it)"
        group = self.group(request)
        if block_for(group) is None:
            return False, f"needs groups of a multiple of {CHUNK} inputs, got {group}"
        if not int8_table(request.fmt)[2]:
            return False, (f"the {request.codebook} code book has no exact int8 form (rounded to int8 it cost 1.6% "
                           "perplexity on SmolLM2-135M)")
        ok, why = super().can_implement(request)
        if not ok:
            return ok, why
        return True, (f"lowbit {native.isa()} integer-dot GEMV (activations rounded to int8 per "
                      f"{block_for(group)} inputs, as llama.cpp does; dequantize + matmul from M={DENSE_MIN_M})")


class CpuDot4Kernel(_DotMixin, CpuGemv4Kernel):
    """4-bit codes; 2- and 3-bit integer grids too, their codes widened to 4 bits at ``prepare`` (in memory a layer
    then takes 4/3 or 2 times its stored size: still an eighth of the dense fp32 copy it would need otherwise)."""

    name = "cpu_dot4"

    def handles(self, request):
        return (request.kind == "int" and request.bits in (2, 3, 4)) or request.kind in ("codebook", "mx")

    def prepare(self, tensors, request):
        if isinstance(request.fmt, IntFormat):
            values = unpack_bits(tensors["qweight"], request.bits, signed=request.symmetric).to(torch.int16)
            scales = tensors["scales"].float().reshape(request.n, -1)
            if request.symmetric:  # unsigned codes, and the grid's middle as the offset
                half = 1 << (request.bits - 1)
                return {"codes": interleave(chunks_of(values + half), 16), "scales": scales, "offsets": -half * scales}
            return {"codes": interleave(chunks_of(values), 16), "scales": scales,
                    "offsets": -tensors["zeros"].float() * scales}
        prepared = self.row_major(tensors, request)
        prepared["scales"] = (prepared["scales"] / int8_table(request.fmt)[1]).contiguous()
        prepared["codes"] = interleave(to_chunks(prepared["codes"]), 16)
        return prepared

    def canonical_from_prepared(self, prepared, request):
        prepared = {**prepared, "codes": deinterleave(prepared["codes"], request.n, 16)}
        if isinstance(request.fmt, IntFormat):
            values = chunk_values(prepared["codes"])
            if request.symmetric:
                values = (values.to(torch.int16) - (1 << (request.bits - 1))).to(torch.int8)
            return {"qweight": pack_bits(values, request.bits)}
        return self.canonical_from_row_major({**prepared, "codes": from_chunks(prepared["codes"])}, request)

    def run(self, x, tensors, prepared, request, bias):
        group = self.group(request)
        op = eager_or_op(torch.ops.lowbit.dot4_cpu, dot4_cpu)
        return op(x, prepared["codes"], int8_table(request.fmt)[0], prepared["scales"], prepared.get("offsets"), group,
                  block_for(group), bias)

    def native_call(self, tensors, prepared, request):
        group = self.group(request)
        return NativeCall("dot4", prepared["codes"], request.n, request.k, group=group, block=block_for(group),
                          table=int8_table(request.fmt)[0], scales=prepared["scales"], offsets=prepared.get("offsets"))


class CpuDot8Kernel(_DotMixin, CpuGemv8Kernel):
    name = "cpu_dot8"

    def handles(self, request):
        return request.kind == "int" and request.bits == 8

    def prepare(self, tensors, request):
        prepared = super().prepare(tensors, request)
        return {**prepared, "codes": interleave(prepared["codes"], CHUNK)}

    def canonical_from_prepared(self, prepared, request):
        return super().canonical_from_prepared({**prepared, "codes": deinterleave(prepared["codes"], request.n, CHUNK)},
                                               request)

    def run(self, x, tensors, prepared, request, bias):
        group = self.group(request)
        op = eager_or_op(torch.ops.lowbit.dot8_cpu, dot8_cpu)
        return op(x, prepared["codes"], prepared["scales"], prepared.get("offsets"), group, block_for(group), bias)

    def native_call(self, tensors, prepared, request):
        group = self.group(request)
        return NativeCall("dot8", prepared["codes"], request.n, request.k, group=group, block=block_for(group),
                          scales=prepared["scales"], offsets=prepared.get("offsets"))

