"""lowbit's integer-dot CPU kernels (dot8.c): activations rounded to int8 per block, as llama.cpp does.

Two kinds of check: the C code against an exact emulation in float64 of what it is meant to compute (the same int8
rounding of the activations), to fp32 accuracy, on both builds; and the conformance suite against the format's
fp32 reference, where the rounding of the activations sets the bound.
"""

import pytest
import torch
from kernel_conformance import KernelConformance
from test_cpu_gemv import needs_native

from lowbit.kernels.cpu import dot, features, native

DOT4 = {"int2-g32-asym", "int3-g64-sym", "int4-g32-asym", "int4-g64-sym", "int4-g64-float-zero", "int4-g128-asym",
        "int4-g128-sym", "int4-g128-bf16-scales", "int4-g256-asym", "int4-channel-asym", "fp4-b32", "mxfp4"}
DOT8 = {"int8-channel-sym", "int8-g128-asym"}
ROUNDING_TOL = 0.03  # relative error of int8-rounded activations (about 0.5-1.5% on these random layers)


def rounded(x: torch.Tensor, block: int) -> torch.Tensor:
    """The activations as the kernel sees them: int8 per block (absmax / 127, round half to even), in float64."""
    xb = x.reshape(x.shape[0], -1, block)
    d = xb.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    return (torch.round(xb * inv) * d.double()).reshape(x.shape).double()


def assert_sum_close(y: torch.Tensor, x: torch.Tensor, terms: torch.Tensor, want: torch.Tensor) -> None:
    """``y`` equals ``want`` up to fp32 summation error: 1e-5 of the products' absolute values summed (``terms``:
    [N, J * K], each part multiplied by ``x``)."""
    bound = 1e-5 * (torch.cat([x.abs()] * (terms.shape[1] // x.shape[1]), 1) @ terms.abs().T) + 1e-6
    worst = ((y.double() - want).abs() / bound).max().item()
    assert worst <= 1, f"off by {worst:.2f} times the fp32 summation bound"


def builds():
    return [which for which in ("avx2", "avx512") if features.ISAS.index(which) <= features.ISAS.index(features.isa())]


@needs_native
@pytest.mark.parametrize("which", builds())
@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize("group,block", [(64, 64), (128, 64), (96, 32), (256, 32)])
def test_dot4_is_the_int8_rounded_product(which, table, group, block):
    m, n, k = 3, 37, 768  # n not a multiple of the 8 rows a pass takes
    torch.manual_seed(group + block)
    x, y = torch.randn(m, k) * 3, torch.empty(m, n)
    values = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    chunks = dot.interleave(dot.to_chunks(values[:, 0::2] | (values[:, 1::2] << 4)), 16)
    tab = torch.randint(-127, 128, (16,), dtype=torch.int8) if table else None
    s, o = torch.rand(n, k // group), torch.randn(n, k // group)
    native.library(which).lowbit_dot4(x.data_ptr(), m, k, chunks.data_ptr(), n, tab.data_ptr() if table else None,
                                      s.data_ptr(), o.data_ptr(), group, block, y.data_ptr(), 1)
    w = (tab[values.long()] if table else values).double().reshape(n, -1, group)
    w = (w * s.double()[..., None] + o.double()[..., None]).reshape(n, k)
    offsets = o.double().repeat_interleave(group, 1)
    assert_sum_close(y, rounded(x, block), torch.cat([w - offsets, offsets], 1), rounded(x, block) @ w.T)


@needs_native
@pytest.mark.parametrize("which", builds())
@pytest.mark.parametrize("group,block", [(768, 64), (128, 64), (96, 32)])
def test_dot8_is_the_int8_rounded_product(which, group, block):
    m, n, k = 2, 21, 768
    torch.manual_seed(group)
    x, y = torch.randn(m, k), torch.empty(m, n)
    codes = torch.randint(-128, 128, (n, k), dtype=torch.int8)  # -128 too: asymmetric layers come as u - 128
    s, o = torch.rand(n, k // group), torch.randn(n, k // group)
    mixed = dot.interleave(codes, 32)
    native.library(which).lowbit_dot8(x.data_ptr(), m, k, mixed.data_ptr(), n, s.data_ptr(), o.data_ptr(), group, block,
                                      y.data_ptr(), 1)
    w, offsets = codes.double() * s.double().repeat_interleave(group, 1), o.double().repeat_interleave(group, 1)
    assert_sum_close(y, rounded(x, block), torch.cat([w, offsets], 1), rounded(x, block) @ (w + offsets).T)


def test_chunk_layout_round_trips():
    codes = torch.randint(0, 256, (5, 64), dtype=torch.uint8)
    chunks = dot.to_chunks(codes)
    values = torch.stack([codes & 15, codes >> 4], -1).reshape(5, 128)
    assert torch.equal(dot.chunk_values(chunks), values)
    assert torch.equal(dot.from_chunks(chunks), codes)
    mixed = dot.interleave(chunks, 16)  # 5 rows padded to 8; rows 0-3 chunk by chunk
    assert mixed.shape == (8, 64) and torch.equal(mixed[0, 16:32], chunks[1, :16])
    assert torch.equal(dot.deinterleave(mixed, 5, 16), chunks)


def test_code_book_tables():
    from lowbit.formats import CodebookFormat, MxFormat
    for fmt in (CodebookFormat("fp4", 32), MxFormat()):
        table, mult, exact = dot.int8_table(fmt)
        assert exact and torch.equal(table.float() / mult, dot._table(fmt))
    table, mult, exact = dot.int8_table(CodebookFormat("nf4", 64))
    assert not exact and table.abs().max() == 127
    assert (table.float() / mult - dot._table(CodebookFormat("nf4", 64))).abs().max() <= 0.5 / mult


@needs_native
class TestCpuDot4(KernelConformance):
    kernel = "cpu_dot4"
    accepts = DOT4
    min_tol = ROUNDING_TOL


@needs_native
class TestCpuDot8(KernelConformance):
    kernel = "cpu_dot8"
    accepts = DOT8
    min_tol = ROUNDING_TOL


class _Avx2:
    @pytest.fixture(autouse=True)
    def _avx2(self, monkeypatch):
        monkeypatch.setenv(features.ISA_ENV, "avx2")


class TestCpuDot4Avx2(_Avx2, TestCpuDot4):
    pass


class TestCpuDot8Avx2(_Avx2, TestCpuDot8):
    pass
