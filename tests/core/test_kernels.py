import pytest
import torch

import lowbit
from lowbit.errors import KernelError
from lowbit.formats import IntFormat
from lowbit.kernels import choose
from lowbit.kernels.cpu import dot, native, unpack_int4pack_cpu
from lowbit.nn import QuantLinear

FORMATS = [IntFormat(8, None, True), IntFormat(4, 128, False), IntFormat(4, 64, True), IntFormat(4, 32, False)]


def make_layer(fmt, n, k, bias=True, kernel=None, compute=torch.bfloat16):
    layer = QuantLinear(k, n, bias, fmt, device="cpu", dtype=torch.float32)
    layer.load_quantized(fmt.encode(torch.randn(n, k)))
    if bias:
        layer.bias = torch.nn.Parameter(torch.randn(n), requires_grad=False)
    layer.prepare(compute, kernel)
    return layer


def expected_cpu_kernel(bits: int, compute: torch.dtype) -> str:
    """By static priority: lowbit's own GEMV with fp32 activations (where a C compiler builds it), else the built-in."""
    if compute == torch.float32 and native.unavailable() is None:
        return f"cpu_gemv{bits}"
    return f"cpu_int{bits}"


def reference(layer, x):
    w = layer.fmt.decode(layer.canonical_tensors(), torch.float32)
    return torch.nn.functional.linear(x.float(), w, layer.bias)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda s: s.describe())
@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float16, torch.float32])
def test_cpu_kernels_are_chosen_for_their_formats(fmt, compute):
    """Which kernel runs a layer (how every kernel that accepts a layer computes it: kernels/kernel_conformance.py)."""
    n, k = 48, 576 if fmt.group_size in (None, 32, 64) else 640
    layer = make_layer(fmt, n, k, compute=compute)
    assert layer.kernel.name == expected_cpu_kernel(fmt.bits, compute)
    assert layer.request.compute_dtype == layer.compute_dtype == compute and layer.request.shape == (n, k)
    x = torch.randn(2, 3, k)
    ref = reference(layer, x)
    assert ((layer(x) - ref).norm() / ref.norm()).item() < {torch.float32: 1e-5, torch.float16: 2e-3,
                                                             torch.bfloat16: 1e-2}[compute]


def test_fallback_group_on_k576():
    # K = 576 with group 128 falls back to 64 (the largest power of two dividing 576)
    model = torch.nn.Sequential(torch.nn.Linear(576, 64))
    with pytest.warns(UserWarning, match="using group_size 64"):
        lowbit.quantize_(model, lowbit.config("int4", group_size=128))
    assert model[0].fmt.group_size == 64 and model[0].kernel.name == expected_cpu_kernel(4, model[0].compute_dtype)
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
    stored = fmt.encode(torch.randn(32, 64))
    layer.load_quantized(stored)
    layer.prepare(torch.bfloat16)
    assert layer._buffers["qweight"] is None  # only the kernel layout is held
    assert torch.equal(layer.qweight, stored["qweight"])  # read from outside, it is rebuilt, never None
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
    ] + ([] if native.unavailable() else [
        (torch.ops.lowbit.dot4_cpu.default, (x, dot.interleave(q4, 16), None, torch.rand(32, 1), torch.randn(32, 1), 64,
                                             64, torch.randn(32))),
        (torch.ops.lowbit.dot8_cpu.default, (x, dot.interleave(w8, 32), torch.rand(32, 2), None, 32, 32, None)),
        (torch.ops.lowbit.gemv4_cpu.default, (x, q4, torch.randn(16), torch.rand(32, 2), None, 32, None)),
        (torch.ops.lowbit.gemv8_cpu.default, (x, w8, torch.rand(32, 1), torch.randn(32, 1), 64, None)),
    ])


@pytest.mark.parametrize("op, args", opcheck_cases(), ids=lambda v: str(v)[:40] if not isinstance(v, tuple) else "")
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("kernel", [None, "cpu_dot4", "cpu_gemv4"])
def test_compile_fullgraph(kernel):
    if kernel and native.unavailable():
        pytest.skip(f"lowbit's C kernels cannot be built here: {native.unavailable()}")
    layer = make_layer(IntFormat(4, 32, False), 32, 64, bias=True)
    if kernel:
        layer.prepare(torch.float32, kernel)
    x = torch.randn(4, 64)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), layer(x))


@pytest.mark.parametrize("n, k", [(48, 128), (1024, 4096), (2080, 4096)])  # 256-row blocks at K=4096
def test_blockwise_cpu_packing_equals_whole_layer(n, k):
    from lowbit.formats import pack_bits
    from lowbit.kernels.cpu.int4 import pack_for_cpu

    codes = torch.randint(0, 16, (n, k), dtype=torch.int32)
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    assert torch.equal(pack_for_cpu(pack_bits(codes.to(torch.uint8), 4), symmetric=False), whole)


# ---- compute_dtype="auto": resolved for the device at every prepare ------------------------------------------------

def _quant_linears(model):
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def test_auto_compute_dtype_follows_the_device_after_a_load_and_a_move(monkeypatch, tmp_path):
    from helpers import make_llama

    from lowbit.kernels.cpu import features

    monkeypatch.setattr(features, "cpu_has_bf16", lambda: False)  # loaded on a CPU without bf16 units
    model = lowbit.from_pretrained(make_llama(tmp_path / "src"), quantization=lowbit.config("int4", group_size=32))
    layers = _quant_linears(model)
    assert {(m.compute_choice, m.compute_dtype, m.request.compute_dtype) for m in layers} == \
        {("auto", torch.float32, torch.float32)}
    monkeypatch.setattr(features, "cpu_has_bf16", lambda: True)  # the model moves to a CPU with them
    model.to("cpu")
    assert {(m.compute_dtype, m.request.compute_dtype) for m in layers} == {(torch.bfloat16, torch.bfloat16)}
    assert all(m.kernel.name == "cpu_int4" for m in layers)  # the built-in: lowbit's GEMV takes fp32 only


def test_auto_compute_dtype_follows_the_device_after_quantizing(monkeypatch):
    from lowbit.kernels.cpu import features

    monkeypatch.setattr(features, "cpu_has_bf16", lambda: True)
    model = torch.nn.Sequential(torch.nn.Linear(256, 64))
    lowbit.quantize_(model, lowbit.config("int4", group_size=32))
    assert model[0].compute_dtype == torch.bfloat16
    monkeypatch.setattr(features, "cpu_has_bf16", lambda: False)
    model.to("cpu")
    assert model[0].compute_dtype == torch.float32 and model[0].request.compute_dtype == torch.float32
    x = torch.randn(3, 256)
    assert ((model(x) - reference(model[0], x)).norm() / reference(model[0], x).norm()).item() < 1e-5


def test_explicit_compute_dtype_stays_after_a_move(monkeypatch):
    from lowbit.kernels.cpu import features

    monkeypatch.setattr(features, "cpu_has_bf16", lambda: True)
    model = torch.nn.Sequential(torch.nn.Linear(256, 64))
    lowbit.quantize_(model, lowbit.config("int4", group_size=32, compute_dtype="float16"))
    model.to("cpu")
    assert model[0].compute_choice == model[0].compute_dtype == torch.float16


def test_auto_resolution_by_device():
    from lowbit.kernels import AUTO, resolve_compute_dtype

    cuda = torch.device("cuda")
    assert resolve_compute_dtype(AUTO, cuda, torch.float32) == torch.bfloat16  # an fp32 model computes in bf16
    assert resolve_compute_dtype(AUTO, cuda, torch.float16) == torch.float16  # a half model in its own dtype
    assert resolve_compute_dtype(AUTO, cuda, torch.bfloat16) == torch.bfloat16
    assert resolve_compute_dtype(torch.float32, cuda, torch.float16) == torch.float32


def test_a_kernel_name_taken_by_another_kernel_is_an_error():
    from lowbit.kernels import Kernel, get_kernel, register_kernel

    before = get_kernel("reference")
    with pytest.raises(KernelError, match=r"kernel name 'reference' is already registered by ReferenceKernel"):
        class Impostor(Kernel):  # noqa: F841  (defining it registers it)
            name = "reference"
    assert get_kernel("reference") is before
    assert register_kernel(type(before)()) is before  # the same class again: a no-op
