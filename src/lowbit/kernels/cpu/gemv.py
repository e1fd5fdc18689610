"""``cpu_gemv4`` and ``cpu_gemv8``: lowbit's own small-M CPU kernels (``gemv.c``, AVX2 or AVX-512, fp32 activations).

``cpu_gemv8`` also runs fp8 e4m3 weights (per channel or in square scale tiles): the C kernel turns each byte into an
fp32 with two integer instructions (see ``FP8_BITS``).

Every layer they run is brought, at ``prepare``, to one form: ``w = table[code] * s + o`` per group, with 4-bit
codes low nibble first (a 16-value table per format: integer grids of every zero kind, NF4, FP4, MXFP4) or signed
8-bit codes.
Symmetric int4 codes are flipped to unsigned (``c + 8``, offset ``-8 s``), asymmetric int8 codes to signed
(``u - 128``, offset ``(128 - z) s``), code books high nibble first swapped; ``canonical_from_prepared`` undoes
that, so a layer keeps one copy of its codes. From ``DENSE_MIN_M`` rows (prefill) the op runs the dense matmul
instead, on slices of rows that ``gemv.c`` dequantizes (``lowbit_dequant4``/``lowbit_dequant8``) into the cache
(``dequantized_matmul``).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from lowbit.formats import IntFormat, MxFormat
from lowbit.formats.codebook import code_values
from lowbit.formats.mx import e8m0_to_float
from lowbit.kernels.base import Kernel, fake_linear, flat
from lowbit.kernels.request import Activations
from lowbit.kernels.cpu import native
from lowbit.kernels.cpu.step import NativeCall
from lowbit.qtypes import ZeroKind, fp4_e2m1

ROWS = 8  # rows interleaved chunk by chunk, the rows of one pass of the 4-bit kernels (GROWS in gemv.c, R in dot8.c)
GEMV4_CHUNK = 16  # bytes (32 codes) of one row stored before the next row's (gemv.c)
DENSE_MIN_M = 8  # rows of activations from which dequantize + dense matmul is faster (benchmarks/cpu_linear.py)
DENSE_SLICE_BYTES = 4 << 20  # fp32 weights dequantized at a time there (M=512: see dequantized_matmul)
FP8_BITS = 2.0**120  # an e4m3 byte shifted into fp32's exponent and mantissa is its value times 2^-120

torch.library.define("lowbit::gemv4_cpu", "(Tensor x, Tensor codes, Tensor? table, Tensor scales, Tensor? offsets, "
                                          "int group, Tensor? bias) -> Tensor")
torch.library.define("lowbit::gemv8_cpu", "(Tensor x, Tensor codes, Tensor scales, Tensor? offsets, int group, "
                                          "Tensor? bias) -> Tensor")


def dequantized_matmul(x: torch.Tensor, n: int, rows: Callable[[int, int], torch.Tensor],
                       bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` in fp32 for many rows of ``x`` (prefill), in ``x``'s dtype. ``rows(r0, r1)`` dequantizes
    rows [r0, r1) of ``W`` to fp32 (r0 a multiple of ``ROWS``); a slice of about ``DENSE_SLICE_BYTES`` at a time is
    multiplied while it is in the cache. For a 65536 x 640 int8 head at M=512 that was 1.4x faster than dequantizing
    it all first, and as fast as the fp32 original (2 cores, AMD EPYC); smaller slices won there and lost on small
    layers, where a whole layer at once is best (``benchmarks/cpu_layers.py --m 512``)."""
    x2, lead = flat(x)
    x2 = x2.float()
    step = max(8 * ROWS, DENSE_SLICE_BYTES // (4 * x2.shape[1]) // ROWS * ROWS)
    if step >= n:
        y = x2 @ rows(0, n).T
    else:
        y = torch.empty(x2.shape[0], n)
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            y[:, r0:r1] = x2 @ rows(r0, r1).T
    if bias is not None:
        y += bias.float()
    return y.reshape(*lead, n).to(x.dtype)


def dequantized_rows(codes, table, scales, offsets, group: int, r0: int, r1: int, split: bool) -> torch.Tensor:
    """Rows [r0, r1) of a 4-bit layer stored as ``cpu_gemv4`` (``split`` False) or ``cpu_dot4`` (True) keep it, as
    fp32 weights, by ``gemv.c``'s ``lowbit_dequant4`` (r0 a multiple of ``ROWS``)."""
    k = scales.shape[1] * group
    w = torch.empty(r1 - r0, k)
    native.library().lowbit_dequant4(codes[r0:].data_ptr(), r1 - r0, k, native.ptr(table), scales[r0:].data_ptr(),
                                     native.ptr(_slice(offsets, r0, r1)), group, int(split), w.data_ptr(),
                                     native.threads_for(r1 - r0, k))
    return w


def _slice(t: torch.Tensor | None, r0: int, r1: int) -> torch.Tensor | None:
    return None if t is None else t[r0:r1]


def dequantized_rows8(codes, scales, offsets, group: int, r0: int, r1: int, interleaved: bool) -> torch.Tensor:
    """Rows [r0, r1) of an 8-bit layer stored as ``cpu_gemv8`` (``interleaved`` False; e4m3 codes too) or ``cpu_dot8``
    (True) keep it, as fp32 weights, by ``gemv.c``'s ``lowbit_dequant8`` (r0 a multiple of ``ROWS``)."""
    k = scales.shape[1] * group
    w = torch.empty(r1 - r0, k)
    native.library().lowbit_dequant8(codes[r0:].data_ptr(), r1 - r0, k, scales[r0:].data_ptr(),
                                     native.ptr(_slice(offsets, r0, r1)), group, int(interleaved),
                                     int(codes.dtype == torch.float8_e4m3fn), w.data_ptr(),
                                     native.threads_for(r1 - r0, k))
    return w


def native_io(x: torch.Tensor, n: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """For a C kernel's call: ``x`` as contiguous fp32 (itself when it is one, as in decoding), its number of rows,
    and the fp32 output ``[..., n]`` it writes, already in the result's shape. A decode step calls this for every
    layer, so it does without reshapes (each a dispatch of about 1 µs)."""
    xf = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
    return xf, xf.numel() // xf.shape[-1], torch.empty(*xf.shape[:-1], n)


def native_finish(y: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """A C kernel's output ``y`` with the bias added, in the caller's dtype."""
    if bias is not None:
        y += bias.float()
    return y if dtype == torch.float32 else y.to(dtype)


def interleave(rows: torch.Tensor, chunk: int) -> torch.Tensor:
    """[N, W] bytes → [N padded to ROWS, W]: each block of ROWS rows stored chunk by chunk (``chunk`` bytes of one
    row, then of the next), the order in which a pass of ``gemv.c``'s and ``dot8.c``'s kernels reads them."""
    n, width = rows.shape
    if n % ROWS:
        rows = torch.cat([rows, rows.new_zeros(ROWS - n % ROWS, width)])
    return rows.reshape(-1, ROWS, width // chunk, chunk).transpose(1, 2).reshape(-1, width).contiguous()


def deinterleave(codes: torch.Tensor, n: int, chunk: int) -> torch.Tensor:
    """The inverse of ``interleave``: the first ``n`` rows, in row order."""
    width = codes.shape[1]
    return codes.reshape(-1, width // chunk, ROWS, chunk).transpose(1, 2).reshape(-1, width)[:n].contiguous()


def eager_or_op(op, impl):
    """``impl`` (the op's own CPU body) in a plain eager call, which skips the dispatcher (about 8 µs of a call's
    20 on a small layer); the op under torch.compile, whose fake implementation keeps the graph whole."""
    return op if torch.compiler.is_compiling() else impl


def gemv4_cpu(x, codes, table, scales, offsets, group, bias):
    """``x @ W.T`` for ``W = table[codes] * scales + offsets`` per group; codes [N, K/2] low nibble first,
    interleaved by ``ROWS`` rows in chunks of ``GEMV4_CHUNK`` bytes."""
    n, k = scales.shape[0], x.shape[-1]
    if x.numel() // k >= DENSE_MIN_M:
        return dequantized_matmul(x, n, lambda r0, r1: dequantized_rows(codes, table, scales, offsets, group, r0, r1,
                                                                         split=False), bias)
    xf, m, y = native_io(x, n)
    native.library().lowbit_gemv4(xf.data_ptr(), m, k, codes.data_ptr(), n, native.ptr(table), scales.data_ptr(),
                                  native.ptr(offsets), group, y.data_ptr(), native.threads_for(n, k))
    return native_finish(y, bias, x.dtype)


def gemv8_cpu(x, codes, scales, offsets, group, bias):
    """``x @ W.T`` for ``W = codes * scales + offsets`` per group; codes int8 [N, K], or e4m3 whose scales carry
    the factor ``FP8_BITS`` (the C kernel reads e4m3 bits as fp32 values 2^-120 times too small)."""
    (n, k), fp8 = codes.shape, codes.dtype == torch.float8_e4m3fn
    if x.numel() // k >= DENSE_MIN_M:
        return dequantized_matmul(x, n, lambda r0, r1: dequantized_rows8(codes, scales, offsets, group, r0, r1,
                                                                          interleaved=False), bias)
    xf, m, y = native_io(x, n)
    native.library().lowbit_gemv8(xf.data_ptr(), m, k, codes.data_ptr(), n, scales.data_ptr(), native.ptr(offsets),
                                  group, y.data_ptr(), native.threads_for(n, k), int(fp8))
    return native_finish(y, bias, x.dtype)


torch.library.impl("lowbit::gemv4_cpu", "CPU")(gemv4_cpu)
torch.library.impl("lowbit::gemv8_cpu", "CPU")(gemv8_cpu)


@torch.library.register_fake("lowbit::gemv4_cpu")
def _(x, codes, table, scales, offsets, group, bias):
    return fake_linear(x, codes.shape[0])


@torch.library.register_fake("lowbit::gemv8_cpu")
def _(x, codes, scales, offsets, group, bias):
    return fake_linear(x, codes.shape[0])


def _book(fmt):
    return fp4_e2m1 if isinstance(fmt, MxFormat) else fmt.code


@functools.lru_cache(maxsize=32)
def _table(fmt) -> torch.Tensor | None:
    """The 16 values of a code-book format's codes in weight units (None: integer codes are their own values);
    kept per format rather than per layer, so fused layers' row slices need no copy of it."""
    if isinstance(fmt, IntFormat):
        return None
    book = _book(fmt)
    return (code_values(book, torch.device("cpu")) / (1.0 if isinstance(fmt, MxFormat) else book.levels)).contiguous()


def _bf16_exact(table: torch.Tensor | None) -> bool:
    return table is None or torch.equal(table, table.bfloat16().float())


@functools.lru_cache(maxsize=32)
def _rounded_table(fmt) -> torch.Tensor:
    return _table(fmt).bfloat16().float().contiguous()


def _swap_nibbles(b: torch.Tensor) -> torch.Tensor:
    return (b << 4) | (b >> 4)


class _NativeKernel(Kernel):
    rebuilds_canonical = True
    bits = 0

    def can_implement(self, request):
        if request.device.type != "cpu":
            return False, f"device is {request.device.type}, this kernel runs on cpu"
        if request.compute_dtype != torch.float32:
            return False, f"runs fp32 activations, compute dtype is {request.compute_dtype}"
        if request.g_idx:
            return False, "needs groups of consecutive inputs, not a g_idx"
        group = request.group_size or request.k
        if self.bits == 4 and group % 32:
            return False, f"needs groups of a multiple of 32 inputs, got {group}"
        why = native.unavailable()
        if why:
            return False, why
        return True, f"lowbit {native.isa()} GEMV (fp32 activations; dequantize + matmul from M={DENSE_MIN_M})"

    def group(self, request) -> int:
        return request.group_size or request.k


class CpuGemv4Kernel(_NativeKernel):
    name = "cpu_gemv4"
    priority = 15  # above the built-ins: with fp32 activations (which they run 10-40x slower) these run
    bits = 4
    row_block = ROWS  # fused members start on a block of interleaved rows

    def handles(self, request):
        return (request.kind == "int" and request.bits == 4) or request.kind in ("codebook", "mx")

    def prepare(self, tensors, request):
        prepared = self.row_major(tensors, request)
        return {**prepared, "codes": interleave(prepared["codes"], GEMV4_CHUNK)}

    def canonical_from_prepared(self, prepared, request):
        return self.canonical_from_row_major({**prepared, "codes": deinterleave(prepared["codes"], request.n,
                                                                                GEMV4_CHUNK)}, request)

    def row_major(self, tensors, request):
        """The codes (in row order, low nibble first), scales and offsets of ``w = table[code] * s + o``."""
        fmt, codes = request.fmt, tensors["qweight"]
        if isinstance(fmt, IntFormat):
            scales = tensors["scales"].float().reshape(request.n, -1)
            if request.zero is ZeroKind.NONE:
                return {"codes": codes ^ 0x88, "scales": scales, "offsets": -8.0 * scales}
            return {"codes": codes, "scales": scales, "offsets": -tensors["zeros"].float() * scales}
        book = _book(fmt)
        scales = e8m0_to_float(tensors["scales"]) if isinstance(fmt, MxFormat) else fmt.absmax(tensors)
        return {"codes": _swap_nibbles(codes) if book.high_first else codes, "scales": scales.float().contiguous()}

    def canonical_from_row_major(self, prepared, request):
        codes = prepared["codes"]
        if isinstance(request.fmt, IntFormat):
            return {"qweight": codes ^ 0x88 if request.zero is ZeroKind.NONE else codes}
        return {"qweight": _swap_nibbles(codes) if _book(request.fmt).high_first else codes}

    def table(self, request) -> torch.Tensor | None:
        return _table(request.fmt)

    def run(self, x, tensors, prepared, request, bias):
        op = eager_or_op(torch.ops.lowbit.gemv4_cpu, gemv4_cpu)
        return op(x, prepared["codes"], self.table(request), prepared["scales"], prepared.get("offsets"),
                  self.group(request), bias)

    def native_call(self, tensors, prepared, request):
        return NativeCall("gemv4", prepared["codes"], request.n, request.k, group=self.group(request),
                          table=self.table(request), scales=prepared["scales"], offsets=prepared.get("offsets"))


class CpuGemv4RoundedKernel(CpuGemv4Kernel):
    """``cpu_gemv4`` with the code book's 16 values rounded to bf16 (8 significant bits: the weights move by at most
    2^-9 of their size, as when bitsandbytes dequantizes NF4 for bf16 compute; activations and sums stay fp32).
    AVX2 then looks a value up with two byte planes instead of four, about 1.2x faster (``gemv.c``). It takes the
    code books that are not bf16 values already (NF4, FP4 over its maximum); integer grids and MXFP4 are, and
    ``cpu_gemv4`` runs them that fast exactly. Below ``cpu_gemv4``: only the CPU tuner picks it, where it is faster.
    SmolLM2-135M nf4 over 16,352 tokens of the evaluation text: perplexity 30.912 exact, 30.924 rounded.
    """

    name = "cpu_gemv4r"
    priority = 13

    def can_implement(self, request):
        ok, why = super().can_implement(request)
        if not ok:
            return ok, why
        if request.kind not in ("codebook", "mx") or _bf16_exact(_table(request.fmt)):
            return False, "its 16 values are bf16 values already: cpu_gemv4 runs them as fast, exactly"
        if native.isa() != "avx2":
            return False, f"{native.isa()} looks the exact code book up as fast (cpu_gemv4)"
        return True, "lowbit AVX2 GEMV with the code book rounded to bf16 (fp32 activations and sums)"

    def table(self, request) -> torch.Tensor | None:
        return _rounded_table(request.fmt)


class CpuGemv8Kernel(_NativeKernel):
    name = "cpu_gemv8"
    priority = 15
    bits = 8

    def handles(self, request):
        return (request.kind == "int" and request.bits == 8) or request.kind == "fp8"

    def can_implement(self, request):
        if request.activations is not Activations.NONE:
            return False, "the format quantizes activations at run time (the reference kernel runs it)"
        if request.scale_tile and request.k % request.scale_tile:
            return False, f"K={request.k} is not a multiple of the {request.scale_tile}-input scale tiles"
        return super().can_implement(request)

    def group(self, request) -> int:
        return request.scale_tile or super().group(request)

    def prepare(self, tensors, request):
        if request.kind == "fp8":
            scales = tensors["scales"].float()
            if request.scale_tile:
                scales = scales.repeat_interleave(request.scale_tile, dim=0)[:request.n]
            return {"codes": tensors["qweight"], "scales": (scales.reshape(request.n, -1) * FP8_BITS).contiguous()}
        scales = tensors["scales"].float().reshape(request.n, -1)
        if request.zero is ZeroKind.NONE:
            return {"codes": tensors["qweight"], "scales": scales.contiguous()}
        codes = (tensors["qweight"] ^ 0x80).view(torch.int8)
        return {"codes": codes, "scales": scales, "offsets": (128.0 - tensors["zeros"].float()) * scales}

    def canonical_from_prepared(self, prepared, request):
        if request.kind == "fp8" or request.zero is ZeroKind.NONE:
            return {"qweight": prepared["codes"]}
        return {"qweight": prepared["codes"].view(torch.uint8) ^ 0x80}

    def run(self, x, tensors, prepared, request, bias):
        op = eager_or_op(torch.ops.lowbit.gemv8_cpu, gemv8_cpu)
        return op(x, prepared["codes"], prepared["scales"], prepared.get("offsets"), self.group(request), bias)

    def native_call(self, tensors, prepared, request):
        return NativeCall("gemv8", prepared["codes"], request.n, request.k, group=self.group(request),
                          fp8=prepared["codes"].dtype == torch.float8_e4m3fn, scales=prepared["scales"],
                          offsets=prepared.get("offsets"))
