"""lowbit's own CPU kernels (gemv.c through ctypes) and ``cpu_dense`` through the conformance suite, on both of
the C file's builds (AVX-512 where this CPU has it, and AVX2 forced by ``LOWBIT_CPU_ISA=avx2``)."""

import pytest
import torch
from kernel_conformance import FORMATS, KernelConformance

from lowbit.kernels.cpu import features, gemv, native

# not int4-g16: the kernel reads 32 codes of a row at a time
GEMV4 = {"int4-g32-asym", "int4-g64-sym", "int4-g64-float-zero", "int4-g128-asym", "int4-g128-sym",
         "int4-g128-bf16-scales", "int4-g256-asym", "int4-channel-asym", "nf4-b64", "nf4-b64-dq", "fp4-b32", "mxfp4"}
GEMV8 = {"int8-channel-sym", "int8-g128-asym", "fp8-channel", "fp8-block128"}

needs_native = pytest.mark.skipif(native.unavailable() is not None,
                                  reason=f"lowbit's C kernels cannot be built here: {native.unavailable()}")


@needs_native
class TestCpuGemv4(KernelConformance):
    kernel = "cpu_gemv4"
    accepts = GEMV4


@needs_native
class TestCpuGemv8(KernelConformance):
    kernel = "cpu_gemv8"
    accepts = GEMV8


class _Avx2:
    @pytest.fixture(autouse=True)
    def _avx2(self, monkeypatch):
        monkeypatch.setenv(features.ISA_ENV, "avx2")
        assert features.isa() == "avx2"


class TestCpuGemv4Avx2(_Avx2, TestCpuGemv4):
    pass


class TestCpuGemv8Avx2(_Avx2, TestCpuGemv8):
    pass


@needs_native
class TestCpuGemv4RoundedAvx2(_Avx2, KernelConformance):
    """The code books that are not bf16 values; each weight moves by at most 2^-9 of itself."""

    kernel = "cpu_gemv4r"
    accepts = {"nf4-b64", "nf4-b64-dq", "fp4-b32"}
    min_tol = 2.0**-8


def test_rounded_code_books_only_where_they_pay(monkeypatch):
    """cpu_gemv4r takes NF4 on AVX2 only: integer grids and MXFP4 are bf16 values already (cpu_gemv4 runs them
    through the same lookup, exactly), and AVX-512 looks any table up as fast."""
    from lowbit.formats import CodebookFormat, IntFormat, MxFormat
    from lowbit.kernels import get_kernel, kernel_request
    from lowbit.qtypes import nf4

    kernel = get_kernel("cpu_gemv4r")

    def verdict(fmt):
        return kernel.can_implement(kernel_request(fmt, (64, 256), "cpu", torch.float32))

    monkeypatch.setenv(features.ISA_ENV, "avx2")
    assert verdict(CodebookFormat(nf4, 64))[0]
    rounded = gemv._rounded_table(CodebookFormat(nf4, 64))
    assert torch.equal(rounded, rounded.bfloat16().float()) and not torch.equal(rounded, gemv._table(
        CodebookFormat(nf4, 64)))
    for exact in (MxFormat(), IntFormat(4, 64, symmetric=True)):
        ok, why = verdict(exact)
        assert not ok and "bf16 values already" in why
    if {"avx512f", "avx512bw", "avx512vl"} <= features.cpu_info()[1]:
        monkeypatch.setenv(features.ISA_ENV, "avx512")
        ok, why = verdict(CodebookFormat(nf4, 64))
        assert not ok and "avx512 looks the exact code book up as fast" in why


class TestCpuDense(KernelConformance):
    kernel = "cpu_dense"
    accepts = set(FORMATS) - {"fp8-channel-dynamic", "w8a8"}


def test_isa_switches(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert features.isa() in ("avx2", "none") and not features.cpu_has_bf16()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    assert features.isa() == "none"
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.setenv(features.ISA_ENV, "avx3")
    with pytest.raises(Exception, match="LOWBIT_CPU_ISA='avx3' is not a known instruction set"):
        features.isa()


@needs_native
@pytest.mark.parametrize("bf16_table", [False, True], ids=["fp32-table", "bf16-table"])
def test_both_builds_give_the_same_numbers(bf16_table):
    """The AVX2 and AVX-512 builds compute the same products (up to fp32 summation order), over a last block of
    rows that is not full; a table of bf16 values takes AVX2's two-plane lookup, exactly."""
    if features.isa() != "avx512":
        pytest.skip("this CPU has no AVX-512: only the AVX2 build runs here")
    n, k, group = 45, 256, 64
    x, y2, y5 = torch.randn(3, k), torch.empty(3, n), torch.empty(3, n)
    codes = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8)
    stored = gemv.interleave(codes, gemv.GEMV4_CHUNK)
    table, s, o = torch.randn(16), torch.rand(n, k // group), torch.randn(n, k // group)
    if bf16_table:
        table = table.bfloat16().float()
    for lib, y in ((native.library("avx2"), y2), (native.library("avx512"), y5)):
        lib.lowbit_gemv4(x.data_ptr(), 3, k, stored.data_ptr(), n, table.data_ptr(), s.data_ptr(), o.data_ptr(), group,
                         y.data_ptr(), 1)
    c = torch.stack([codes & 15, codes >> 4], -1).reshape(n, k).long()
    w = (table[c].reshape(n, -1, group) * s[..., None] + o[..., None]).reshape(n, k)
    torch.testing.assert_close(y2, x @ w.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y5, x @ w.T, rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("kernel, method, fields", [
    ("cpu_gemv4", "nf4", {}), ("cpu_gemv4", "int4", {"group_size": 64}), ("cpu_gemv4", "hqq", {"iters": 2}),
    ("cpu_gemv8", "int8", {}), ("cpu_gemv8", "fp8", {}), ("cpu_gemv8", "rtn", {"bits": 8, "symmetric": False}),
    ("cpu_dot4", "int4", {}), ("cpu_dot4", "fp4", {}), ("cpu_dot8", "rtn", {"bits": 8, "symmetric": False})])
def test_many_rows_run_in_slices_of_the_weight(monkeypatch, kernel, method, fields):
    """Prefill dequantizes a slice of rows at a time in C (here 64: the smallest); 203 outputs leave a last slice of
    11 rows, which for interleaved codes ends inside a block of 8."""
    import lowbit
    from torch import nn

    monkeypatch.setenv("LOWBIT_KERNEL", kernel)
    monkeypatch.setattr(gemv, "DENSE_SLICE_BYTES", 1)
    torch.manual_seed(0)
    config = lowbit.config(method, compute_dtype="float32", **fields)
    layer = lowbit.quantize_(nn.Sequential(nn.Linear(256, 203)), config)[0]
    x = torch.randn(2, 9, 256)
    y = layer(x)
    assert layer.kernel.name == kernel and y.shape == (2, 9, 203)
    torch.testing.assert_close(y, x @ layer.dequantize(torch.float32).T + layer.bias, rtol=1e-4, atol=1e-4)
