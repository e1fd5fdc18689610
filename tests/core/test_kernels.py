import pytest
import torch

import lowbit
from lowbit.errors import KernelError
from lowbit.formats import IntFormat
from lowbit.kernels import choose
from lowbit.kernels.cpu import unpack_int4pack_cpu
from lowbit.nn import QuantLinear
from lowbit.rtn import rtn_quantize

FORMATS = [IntFormat(8, None, True), IntFormat(4, 128, False), IntFormat(4, 64, True), IntFormat(4, 32, False)]


def make_layer(fmt, n, k, bias=True, kernel=None, compute=torch.bfloat16):
    layer = QuantLinear(k, n, bias, fmt, device="cpu", dtype=torch.float32)
    layer.load_quantized(rtn_quantize(torch.randn(n, k), fmt))
    if bias:
        layer.bias = torch.nn.Parameter(torch.randn(n), requires_grad=False)
    layer.prepare(compute, kernel)
    return layer


def reference(layer, x):
    w = layer.fmt.dequantize(layer.canonical_tensors(), torch.float32)
    return torch.nn.functional.linear(x.float(), w, layer.bias)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda s: s.describe())
@pytest.mark.parametrize("m", [1, 7, 33, 130])  # 130: int8's dense path for long inputs
@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float16, torch.float32])
def test_fast_kernels_match_reference(fmt, m, compute):
    n, k = 48, 576 if fmt.group_size in (None, 32, 64) else 640
    layer = make_layer(fmt, n, k, compute=compute)
    assert layer.kernel.name == ("cpu_int8" if fmt.bits == 8 else "cpu_int4")
    x = torch.randn(2, m, k)
    ref = reference(layer, x)
    got = layer(x)
    assert got.shape == (2, m, n) and got.dtype == x.dtype
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[compute]
    forced = make_layer(fmt, n, k, compute=compute, kernel="reference")
    forced.load_quantized(layer.canonical_tensors())
    forced.bias = layer.bias
    forced.prepare()
    assert forced.kernel.name == "reference"
    assert ((forced(x) - ref).norm() / ref.norm()).item() < {torch.float32: 1e-6, torch.float16: 2e-3,
                                                              torch.bfloat16: 1e-2}[compute]


def test_fallback_group_on_k576():
    # K = 576 with group 128 falls back to 64 (the largest power of two dividing 576)
    model = torch.nn.Sequential(torch.nn.Linear(576, 64))
    with pytest.warns(UserWarning, match="using group_size 64"):
        lowbit.quantize_(model, lowbit.config("int4", group_size=128))
    assert model[0].fmt.group_size == 64 and model[0].kernel.name == "cpu_int4"
    assert model.lowbit_quantizer.layers == {"0": {"group_size": 64}}


def test_int4_kernel_declines_odd_n_with_reason():
    fmt = IntFormat(4, 32, False)
    kernel, reason = choose(fmt, torch.device("cpu"), (40, 64), torch.bfloat16)
    assert kernel.name == "reference" and "N=40 is not a multiple of 16" in reason
    layer = make_layer(fmt, 40, 64)
    x = torch.randn(3, 64)
    ref = reference(layer, x)
    assert ((layer(x) - ref).norm() / ref.norm()).item() < 1e-2


def test_forced_kernel_that_cannot_run_is_an_error(monkeypatch):
    monkeypatch.setenv("LOWBIT_KERNEL", "cpu_int8")
    with pytest.raises(KernelError, match="cpu_int8.*cannot run"):
        make_layer(IntFormat(4, 32, False), 32, 64)
    monkeypatch.setenv("LOWBIT_KERNEL", "nope")
    with pytest.raises(KernelError, match="unknown kernel 'nope'"):
        make_layer(IntFormat(4, 32, False), 32, 64)


def test_env_var_forces_kernel(monkeypatch):
    monkeypatch.setenv("LOWBIT_KERNEL", "reference")
    layer = make_layer(IntFormat(4, 32, False), 32, 64)
    assert layer.kernel.name == "reference" and layer.kernel_reason.startswith("forced")


@pytest.mark.parametrize("n, k", [(16, 32), (64, 64), (80, 96), (208, 1024), (130 * 16, 64)])
def test_int4pack_cpu_inverse(n, k):
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    assert torch.equal(unpack_int4pack_cpu(packed, k).to(torch.int32), codes)


@pytest.mark.parametrize("fmt", [IntFormat(4, 32, False), IntFormat(4, 64, True)], ids=str)
def test_int4_layer_keeps_one_copy_and_rebuilds_canonical(fmt):
    layer = QuantLinear(64, 32, False, fmt, device="cpu")
    stored = rtn_quantize(torch.randn(32, 64), fmt)
    layer.load_quantized(stored)
    layer.prepare(torch.bfloat16)
    assert layer.qweight is None  # only the kernel layout is held
    for name, tensor in layer.state_dict().items():
        assert torch.equal(tensor, stored[name]), name


def opcheck_cases():
    x = torch.randn(3, 64)
    w8 = torch.randint(-127, 128, (32, 64), dtype=torch.int8)
    s8 = torch.rand(32)
    codes = torch.randint(0, 16, (32, 64), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    sz = torch.rand(2, 32, 2)
    q4 = torch.randint(0, 256, (32, 32), dtype=torch.uint8)
    return [
        (torch.ops.lowbit.linear_ref.default, (x, [q4, torch.rand(32, 2).half(), torch.randint(0, 16, (32, 2), dtype=torch.uint8)],
                                               IntFormat(4, 32, False).key(), None)),
        (torch.ops.lowbit.linear_ref.default, (x, [w8, torch.rand(32, 1)], IntFormat(8, None, True).key(), torch.randn(32))),
        (torch.ops.lowbit.int8_linear_cpu.default, (x, w8, s8, None)),
        (torch.ops.lowbit.int8_linear_cpu.default, (x.bfloat16(), w8, s8.bfloat16(), torch.randn(32))),
        (torch.ops.lowbit.int4_linear_cpu.default, (x, packed, sz, 32, None)),
        (torch.ops.lowbit.int4_linear_cpu.default, (x.bfloat16().reshape(3, 1, 64), packed, sz.bfloat16(), 32, torch.randn(32))),
    ]


@pytest.mark.parametrize("op, args", opcheck_cases(), ids=lambda v: str(v)[:40] if not isinstance(v, tuple) else "")
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_compile_fullgraph():
    layer = make_layer(IntFormat(4, 32, False), 32, 64, bias=True)
    x = torch.randn(4, 64)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), layer(x))


@pytest.mark.parametrize("n, k", [(48, 128), (1024, 4096), (2080, 4096)])  # 256-row blocks at K=4096
def test_blockwise_cpu_packing_equals_whole_layer(n, k):
    from lowbit.formats import pack_bits
    from lowbit.kernels.cpu import _pack_for_cpu

    codes = torch.randint(0, 16, (n, k), dtype=torch.int32)
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    assert torch.equal(_pack_for_cpu(pack_bits(codes.to(torch.uint8), 4), symmetric=False), whole)
