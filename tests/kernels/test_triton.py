"""Triton kernels: the CPU-side contract everywhere; correctness against the reference op on a GPU.

The GPU tests skip on machines without CUDA (CI); benchmarks/gpu_run.sh runs them on the GPU machine.
"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from kernel_conformance import stored

from lowbit.errors import KernelError
from lowbit.formats import CodebookFormat, Fp8Format, IntFormat, pack_bits, unpack_bits
from lowbit.kernels import choose, get_kernel, kernel_request, kernels
from lowbit.kernels.triton import Family, TritonKernel
from lowbit.kernels.triton.layout import codes_from_words, nibble_words
from lowbit.nn import QuantLinear

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device: the Triton kernels run on the GPU machine "
                                                 "(benchmarks/gpu_run.sh)")

FORMATS = {
    "int4-g32-asym": IntFormat(4, 32, False),
    "int4-g64-hqq": IntFormat(4, 64, False, float_zero=True),
    "int4-g128-asym": IntFormat(4, 128, False),
    "int4-g128-sym": IntFormat(4, 128, True),
    "int8": IntFormat(8, None, True),
    "nf4-b64": CodebookFormat("nf4", 64),
    "nf4-b64-dq": CodebookFormat("nf4", 64, double_quant=True),
    "fp8": Fp8Format(),
    "fp8-dynamic": Fp8Format(activations="dynamic"),
}
KERNEL_OF = {"int": {4: "triton_int4", 8: "triton_int8"}, "codebook": "triton_codebook", "fp8": "triton_fp8"}


def layer(fmt, n, k, device, compute, kernel=None, bias=True):
    w = torch.randn(n, k, device=device) / k**0.5
    ql = QuantLinear(k, n, bias, fmt, device=device, dtype=compute)
    ql.load_quantized(stored(fmt, w))
    if bias:
        ql.bias = torch.nn.Parameter(torch.randn(n, device=device, dtype=compute), requires_grad=False)
    ql.prepare(compute, kernel)
    return ql


# ---- everywhere (CI included) --------------------------------------------------------------------


def test_package_imports_and_runs_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"  # import triton now fails, as where it is not installed
            "import torch, lowbit\n"
            "from lowbit.formats import IntFormat\n"
            "from lowbit.kernels import choose\n"
            "k, why = choose(IntFormat(4, 128, False), torch.device('cuda'), (256, 256), torch.bfloat16)\n"
            "assert k.name == 'reference' and 'triton_int4: triton is not installed' in why, why\n"
            "m = torch.nn.Sequential(torch.nn.Linear(256, 64))\n"
            "lowbit.quantize_(m, lowbit.config('int4', group_size=128))\n"
            "assert m(torch.randn(2, 256)).shape == (2, 64)\n"
            "assert 'triton' not in sys.modules or sys.modules['triton'] is None\n")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("name", list(FORMATS))
def test_cuda_kernels_decline_cpu_layer_with_reason(name):
    fmt = FORMATS[name]
    kernel, why = choose(fmt, torch.device("cpu"), (64, 256), torch.bfloat16)
    assert not kernel.name.startswith("triton")
    assert "device is cpu, this kernel runs on cuda" in why


def test_forced_triton_kernel_on_cpu_is_an_error(monkeypatch):
    monkeypatch.setenv("LOWBIT_KERNEL", "triton_int4")
    with pytest.raises(KernelError, match="triton_int4.*cannot run.*device is cpu"):
        layer(IntFormat(4, 128, False), 32, 256, "cpu", torch.bfloat16)


def test_fp8_declines_without_fp8_units(monkeypatch):
    import lowbit.kernels.triton.env as tk

    monkeypatch.setattr(tk, "triton_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    request = kernel_request(Fp8Format(), (256, 256), "cuda", torch.bfloat16)
    ok, why = get_kernel("triton_fp8").can_implement(request)
    assert not ok and why == "compute capability 8.0 has no fp8 instructions (needs 8.9+)"


@pytest.mark.parametrize("n, k", [(1, 128), (40, 256), (11008 // 16, 4096 + 128)])
def test_nibble_layout_round_trip(n, k):
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    words = nibble_words(codes)
    rows = -(-n // 16) * 16  # padded to whole blocks of 16 rows
    assert words.shape == (rows * k // 8,) and words.dtype == torch.int32
    assert torch.equal(codes_from_words(words, n, k), codes)
    # row r, chunk c, word j: block r // 16, then chunk c's 16 x 16 words, then row r % 16; nibble i of word j
    # holds input c*128 + i*16 + j
    r, c, i, j = min(n - 1, 19), k // 128 - 1, 3, 5
    word = words[(r // 16) * 16 * (k // 8) + c * 256 + (r % 16) * 16 + j]
    assert int((word >> (4 * i)) & 15) == int(codes[r, c * 128 + i * 16 + j])


@pytest.mark.parametrize("name", ["int4-g32-asym", "int4-g128-sym", "nf4-b64", "nf4-b64-dq"])
def test_kernel_layout_rebuilds_canonical(name):
    fmt = FORMATS[name]
    kernel = get_kernel(KERNEL_OF["codebook"] if isinstance(fmt, CodebookFormat) else "triton_int4")
    t = stored(fmt, torch.randn(48, 256))
    request = kernel_request(fmt, (48, 256), "cuda", torch.bfloat16)
    prepared = kernel.layout(t, request)
    rebuilt = kernel.canonical_from_prepared(prepared, request)
    assert set(rebuilt) == set(kernel.dropped_names(request)) & set(t)  # every dropped tensor comes back
    for name, tensor in rebuilt.items():
        assert torch.equal(tensor, t[name]) and tensor.is_contiguous(), name
    scales = prepared["s"] if "s" in prepared else prepared["absmax"]
    assert scales.shape == (48, 256 // fmt.group_size if isinstance(fmt, IntFormat) else 256 // fmt.absmax_block)
    assert scales.stride() == (1, 48)  # column-major: one group's rows side by side
    if isinstance(fmt, IntFormat):  # symmetric codes are stored + 8
        codes = codes_from_words(prepared["w"], 48, 256)
        expect = unpack_bits(t["qweight"], 4) ^ (8 if fmt.symmetric else 0)
        assert torch.equal(codes, expect) and torch.equal(pack_bits(expect ^ (8 if fmt.symmetric else 0), 4),
                                                           t["qweight"])


@pytest.mark.parametrize("name", ["int4-g64-hqq", "int4-g128-sym", "nf4-b64", "nf4-b64-dq"])
def test_layer_keeps_only_the_kernel_layout_and_saves_the_canonical_tensors(name, monkeypatch):
    fmt = FORMATS[name]
    kernel = get_kernel(KERNEL_OF["codebook"] if isinstance(fmt, CodebookFormat) else "triton_int4")
    monkeypatch.setattr(type(kernel), "can_implement", lambda *a: (True, "layout only"))  # never run here
    ql = QuantLinear(256, 40, False, fmt, device="cpu", dtype=torch.bfloat16)
    canon = stored(fmt, torch.randn(40, 256))
    ql.load_quantized({n: t.clone() for n, t in canon.items()})
    ql.prepare(torch.bfloat16, kernel.name)
    dropped = {n for n in ql.tensor_names() if ql._buffers[n] is None}
    assert dropped == set(kernel.dropped_names(ql.request)) & set(canon) and "qweight" in dropped
    state = ql.state_dict()
    assert set(state) == set(canon) and all(torch.equal(state[n], canon[n]) for n in canon)


def test_every_triton_kernel_is_registered():
    names = {k.name for k in kernels() if isinstance(k, TritonKernel)}
    assert names == {"triton_int4", "triton_int8", "triton_codebook", "triton_fp8"}
    assert all(get_kernel(n).name == n for n in names)


def test_former_name_triton_nf4_still_selects_the_codebook_kernel(monkeypatch):
    import lowbit.kernels.triton.env as tk

    monkeypatch.setattr(tk, "triton_available", lambda: True)
    for fmt in (CodebookFormat("nf4", 64), CodebookFormat("fp4", 64)):
        with pytest.warns(FutureWarning, match="'triton_nf4' is now called 'triton_codebook'"):
            kernel, why = choose(fmt, torch.device("cuda"), (256, 256), torch.bfloat16, forced="triton_nf4")
        assert kernel.name == "triton_codebook" and why.startswith(f"forced: triton {fmt.code}/64: ")
    monkeypatch.setenv("LOWBIT_KERNEL", "triton_nf4")
    with pytest.warns(FutureWarning, match="triton_codebook"):
        assert choose(CodebookFormat("nf4", 64), torch.device("cuda"), (256, 256), torch.bfloat16)[0].name == \
            "triton_codebook"


def test_the_op_is_told_typed_scalars_and_the_tuner_keys_stay_as_cached():
    """Each Triton kernel hands the op (family, group, code book, dynamic); the tuner's key is written from them by
    one function, in the form of the committed cache (tuned_h100.json)."""
    import json
    from pathlib import Path

    from lowbit.kernels.triton import tune

    want = {"int4-g128-asym": ((0, 128, "", False), "int4/128"), "int4-g128-sym": ((0, 128, "", False), "int4/128"),
            "int8": ((2, 0, "", False), "int8"), "nf4-b64": ((1, 64, "nf4", False), "nf4/64"),
            "fp8": ((3, 0, "", False), "fp8"), "fp8-dynamic": ((3, 0, "", True), "fp8dyn")}
    cache = json.loads((Path(tune.__file__).parent / "tuned_h100.json").read_text())["configs"]
    cached = {key.split("|")[0] for key in cache}
    for name, (args, label) in want.items():
        fmt = FORMATS[name]
        request = kernel_request(fmt, (11008, 4096), "cuda", torch.bfloat16)
        tf = get_kernel(kernel_name(fmt)).triton_format(request)
        assert tf.op_args() == args and tf.label == label and label in cached
        assert tune.key(tf, torch.bfloat16, 3, 4096, 11008) == f"{label}|bfloat16|M4|K4096|N11008"


# ---- on a GPU ---------------------------------------------------------------------------------------

N, K = 11008, 4096 + 128
TOL = {torch.bfloat16: 1.5e-2, torch.float16: 3e-3}


def kernel_name(fmt):
    entry = KERNEL_OF[fmt.kind]
    return entry[fmt.bits] if isinstance(entry, dict) else entry


@pytest.fixture(scope="module")
def layers():
    cache = {}

    def get(name, compute):
        if (name, compute) not in cache:
            torch.manual_seed(0)
            cache[name, compute] = layer(FORMATS[name], N, K, "cuda", compute)
        return cache[name, compute]
    return get


def ref_out(ql, x):
    names = ql.fmt.tensor_names()
    canon = ql.canonical_tensors()
    return torch.ops.lowbit.linear_ref(x, [canon[n] for n in names], ql.fmt.key(), ql.bias)


@needs_cuda
@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("m", [1, 3, 16, 17, 64, 257])
def test_triton_matches_reference(layers, name, compute, m):
    ql = layers(name, compute)
    assert ql.kernel.name == kernel_name(ql.fmt), ql.kernel_reason
    x = torch.randn(m, K, device="cuda", dtype=compute)
    got = ql(x)
    ref = ref_out(ql, x)
    assert got.shape == (m, N) and got.dtype == compute and torch.isfinite(got).all()
    rel = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
    assert rel < TOL[compute], f"{name} M={m}: relative error {rel:.2e} vs the reference op"


@needs_cuda
@pytest.mark.parametrize("name", ["int4-g128-asym", "nf4-b64", "int8", "fp8", "fp8-dynamic"])
@pytest.mark.parametrize("cfg", [
    {"path": "gemv", "BN": 8, "CPI": 2, "SPLIT_K": 3, "num_warps": 4, "num_stages": 2},
    {"path": "gemm", "BM": 16, "BN": 128, "CPI": 1, "SPLIT_K": 11, "num_warps": 4, "num_stages": 4},
    {"path": "gemm", "BM": 64, "BN": 64, "CPI": 3, "SPLIT_K": 1, "num_warps": 8, "num_stages": 2},
    {"path": "gemm", "BM": 64, "BN": 64, "CPI": 1, "SPLIT_K": 2, "num_warps": 4, "num_stages": 2, "SWAP": True,
     "FLAT": 1},
    {"path": "gemv4", "BN": 16, "CPI": 1, "SPLIT_K": 3, "num_warps": 2, "num_stages": 1, "DEC": 1, "EV": 1, "PD": 1},
    {"path": "dequant"},
], ids=["gemv-split3", "gemm16-split11", "gemm64-cpi3", "gemm64-swap-flat", "gemv4-split3", "dequant"])
def test_explicit_configs_match_reference(layers, name, cfg):
    """Configs the tuner may pick that the default paths do not take (odd split-K, several chunks a step)."""
    from lowbit.kernels.triton import ops

    ql = layers(name, torch.bfloat16)
    x = torch.randn(5, K, device="cuda", dtype=torch.bfloat16)
    w, s, z = ql.kernel.tensors(ql._buffers, ql._prepared)
    got = ops.run(x, w, s, z, ql.bias, ql.kernel.triton_format(ql.request), cfg)
    ref = ref_out(ql, x)
    rel = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
    assert rel < TOL[torch.bfloat16], f"{name} {cfg}: relative error {rel:.2e}"


@needs_cuda
@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("fmt", [IntFormat(4, 128, False), IntFormat(4, 128, True), IntFormat(4, 32, False),
                                  IntFormat(4, None, False)], ids=["g128-asym", "g128-sym", "g32-asym", "channel"])
@pytest.mark.parametrize("cfg", [
    {"path": "gemm", "BM": 16, "BN": 64, "CPI": 1, "SPLIT_K": 2, "num_warps": 4, "num_stages": 3, "SWAP": True},
    {"path": "gemm", "BM": 64, "BN": 128, "CPI": 1, "SPLIT_K": 1, "num_warps": 8, "num_stages": 3},
    {"path": "gemm", "BM": 64, "BN": 64, "CPI": 1, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3, "PK": 0},
    {"path": "dequant"},
], ids=["swap16-split2", "tile64", "tile64-fp32-decode", "dequant"])
def test_gemm_decodes_int4_weights_exactly(fmt, compute, cfg):
    """x = identity: each output is one weight times 1.0 (fp32 sums of exact products), so the GEMM returns its
    decoded weights: bit for bit the reference's dequantization rounded to x's dtype, for every decode path with
    integer zeros (two weights a register, scaled in the tile or after the product, and the fp32 one; HQQ's
    fractional zeros are within the tolerance of the tests above, not exact)."""
    from lowbit.kernels.triton import ops

    torch.manual_seed(0)
    ql = layer(fmt, 200, 384, "cuda", compute, bias=False)  # 200 rows: a partial tile of rows
    w, s, z = ql.kernel.tensors(ql._buffers, ql._prepared)
    got = ops.run(torch.eye(384, device="cuda", dtype=compute), w, s, z, None, ql.kernel.triton_format(ql.request),
                  cfg)
    want = ql.fmt.decode(ql.canonical_tensors(), torch.float32).to(compute).t()
    assert torch.equal(got, want), f"{(got != want).sum().item()} of {got.numel()} weights differ"


@needs_cuda
@pytest.mark.parametrize("name", ["int4-g128-asym", "int8"])
@pytest.mark.parametrize("cfg", [
    {"path": "gemv", "BN": 64, "CPI": 1, "SPLIT_K": 8, "num_warps": 4, "num_stages": 2},
    {"path": "gemm", "BM": 16, "BN": 64, "CPI": 1, "SPLIT_K": 4, "num_warps": 4, "num_stages": 3, "SWAP": True},
    {"path": "gemv4", "BN": 128, "CPI": 1, "SPLIT_K": 8, "num_warps": 4, "num_stages": 1, "DEC": 1, "EV": 1, "PD": 0},
], ids=["gemv-split8", "gemm-swap-split4", "gemv4-split8"])
def test_split_k_is_deterministic_and_leaves_counters_at_zero(layers, name, cfg):
    """Split-K adds the partial sums in a fixed order: the same input gives the same bits, run after run."""
    from lowbit.kernels.triton import ops

    ql = layers(name, torch.bfloat16)
    w, s, z = ql.kernel.tensors(ql._buffers, ql._prepared)
    x = torch.randn(3, K, device="cuda", dtype=torch.bfloat16)
    tf = ql.kernel.triton_format(ql.request)
    first = ops.run(x, w, s, z, ql.bias, tf, cfg)
    for _ in range(20):
        assert torch.equal(ops.run(x, w, s, z, ql.bias, tf, cfg), first)
    assert int(ops.locks(x.device).count_nonzero()) == 0


@needs_cuda
@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("fmt", [IntFormat(4, 128, False), IntFormat(4, 128, True), IntFormat(4, 256, False),
                                  IntFormat(4, None, False), IntFormat(4, 128, False, float_zero=True)],
                         ids=["g128-asym", "g128-sym", "g256-asym", "channel", "g128-float-zero"])
@pytest.mark.parametrize("dec, pd", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemv4_matches_reference(fmt, compute, dec, pd):
    """The int4 GEMV of one group a chunk, every decode with and without prefetch, M = 1..4, split-K and not,
    a partial block of rows, large activations (the 2^11-scaled slabs of the second decode must not lose them)."""
    from lowbit.kernels.triton import ops

    torch.manual_seed(0)
    ql = layer(fmt, 200, 1024, "cuda", compute)
    w, s, z = ql.kernel.tensors(ql._buffers, ql._prepared)
    tf = ql.kernel.triton_format(ql.request)
    for m, split, bn in ((1, 1, 64), (2, 4, 128), (4, 8, 32)):
        cfg = {"path": "gemv4", "BN": bn, "CPI": 1, "SPLIT_K": split, "num_warps": 4, "num_stages": 1, "DEC": dec,
               "EV": 1, "PD": pd}
        x = torch.randn(m, 1024, device="cuda", dtype=compute) * (100.0 if m == 2 else 1.0)
        got = ops.run(x, w, s, z, ql.bias, tf, cfg)
        ref = ref_out(ql, x)
        rel = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
        assert got.shape == (m, 200) and rel < TOL[compute], f"M={m} split {split}: relative error {rel:.2e}"
    assert int(ops.locks(x.device).count_nonzero()) == 0


@needs_cuda
def test_shape_fast_path_cannot_take_falls_back_to_reference():
    fmt = IntFormat(4, 64, False)
    ql = layer(fmt, 96, 192, "cuda", torch.bfloat16)  # K = 192 is not a multiple of 128
    assert ql.kernel.name == "reference" and "triton_int4: K=192 is not a multiple of 128" in ql.kernel_reason
    x = torch.randn(3, 192, device="cuda", dtype=torch.bfloat16)
    w = fmt.decode(ql.canonical_tensors(), torch.float32)
    ref = torch.nn.functional.linear(x.float(), w, ql.bias.float())
    assert ((ql(x).float() - ref).norm() / ref.norm()).item() < 1e-2


@needs_cuda
def test_inspect_reason_names_the_configs():
    ql = layer(FORMATS["int4-g128-asym"], 256, 512, "cuda", torch.bfloat16)
    assert ql.kernel.name == "triton_int4"
    assert ql.kernel_reason.startswith("triton int4/128: M1: gemv") and "M16: gemm" in ql.kernel_reason


@needs_cuda
@pytest.mark.parametrize("name", ["int4-g128-asym", "int4-g64-hqq", "int4-g128-sym", "int8", "nf4-b64", "fp8",
                                  "fp8-dynamic"])
def test_opcheck(name):
    ql = layer(FORMATS[name], 256, 384, "cuda", torch.bfloat16)
    w, s, z = ql.kernel.tensors(ql._buffers, ql._prepared)
    tf = ql.kernel.triton_format(ql.request)
    # test_schema runs the op under a mode that multiplies inputs, which torch has no fp8 kernel for
    utils = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic") if tf.family is Family.FP8 \
        else ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    for x, bias in ((torch.randn(3, 384, device="cuda", dtype=torch.bfloat16), ql.bias),
                    (torch.randn(2, 1, 384, device="cuda", dtype=torch.bfloat16), None)):
        torch.library.opcheck(torch.ops.lowbit.triton_linear.default, (x, w, s, z, bias, *tf.op_args()),
                              test_utils=utils)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("m, k", [(1, 4096), (5, 4096 + 128), (257, 14336), (3, 96)])
def test_fp8_row_quantization_is_the_torch_one_bit_for_bit(dtype, m, k):
    from lowbit.formats.fp8 import quantize_rows
    from lowbit.kernels.triton import ops

    x = (torch.randn(m, k, device="cuda") * torch.logspace(-3, 3, m, device="cuda")[:, None]).to(dtype)
    x[0, : k // 2] = 0
    if m > 2:
        x[2] = 0  # an all-zero row: scale 1, codes 0
    q, s = ops.quantize_rows_cuda(x)
    want_q, want_s = quantize_rows(x)
    assert torch.equal(s, want_s)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))


@needs_cuda
def test_compile_fullgraph_and_cuda_graph():
    ql = layer(FORMATS["int4-g128-asym"], 512, 1024, "cuda", torch.bfloat16)
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    eager = ql(x)
    assert torch.equal(torch.compile(ql, fullgraph=True, backend="aot_eager")(x), eager)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ql(x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


@needs_cuda
@pytest.mark.parametrize("name", ["int4-g128-asym", "int8", "nf4-b64"])
def test_inductor_runs_the_kernels_inside_its_graph(name):
    """Under torch.compile (inductor, one graph) the Triton kernels are in inductor's own code, not an opaque op
    call, and give the eager result; the layer's tensors are static inputs, so CUDA graphs read them in place."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    ql = layer(FORMATS[name], 512, 1024, "cuda", torch.bfloat16)
    assert all(hasattr(t, "_dynamo_static_input_type") for t in ql._prepared.values())
    with torch.inference_mode():
        for m in (1, 5):
            x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
            eager = ql(x)
            got, code = run_and_get_code(torch.compile(ql, fullgraph=True), x)
            assert torch.equal(got, eager)
            src = "\n".join(code)
            assert any(f"{kernel}_kernel" in src for kernel in ("gemv", "gemv4", "gemm")), src[-2000:]
            assert "lowbit.triton_linear" not in src, src[-2000:]


@needs_cuda
def test_int4_prompt_path_runs_inside_inductors_graph():
    """From M = 512 int4 dequantizes to x's dtype and multiplies with cuBLAS (tune.fixed); compiled in one graph, the
    dequantizing kernel is in inductor's code and the result is the eager one (to an ulp or so of bf16: the product
    may be a different cuBLAS call)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    ql = layer(FORMATS["int4-g128-asym"], 512, 1024, "cuda", torch.bfloat16)
    x = torch.randn(600, 1024, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        eager = ql(x)
        got, code = run_and_get_code(torch.compile(ql, fullgraph=True), x)
    torch.testing.assert_close(got, eager, rtol=2**-7, atol=2**-7 * eager.abs().max().item())
    src = "\n".join(code)
    assert "dequant4_kernel" in src and "lowbit.triton_linear" not in src, src[-2000:]


@needs_cuda
def test_eager_fast_path_equals_the_op():
    """A plain eager call skips the op's dispatch (launcher.linear); it computes what the op computes, for every
    M bucket and for unaligned inputs."""
    ql = layer(FORMATS["int4-g128-asym"], 512, 1024, "cuda", torch.bfloat16)
    w, s, z = ql.kernel.tensors(ql._buffers, ql._prepared)
    tf = ql.kernel.triton_format(ql.request)
    for m in (1, 2, 16, 64, 300, 600):
        x = torch.randn(m + 1, 1024, device="cuda", dtype=torch.bfloat16)
        for xv in (x[:m], x.view(-1)[1:1 + m * 1024].view(m, 1024)):  # aligned, then 2 bytes off
            for _ in range(2):  # the second call runs the compiled kernel directly
                assert torch.equal(ql(xv), torch.ops.lowbit.triton_linear(xv, w, s, z, ql.bias, *tf.op_args()))


@needs_cuda
def test_eager_prompt_path_shares_one_buffer_across_layers():
    """From M = 512 eager int4 layers dequantize into one shared buffer per dtype (launched directly after the
    first call); layers of different sizes called in turn each still give the op's result."""
    pair = [layer(FORMATS["int4-g128-asym"], n, k, "cuda", torch.bfloat16) for n, k in ((512, 1024), (2048, 512))]
    xs = [torch.randn(2, 300, ql.in_features, device="cuda", dtype=torch.bfloat16) for ql in pair]
    for _ in range(3):
        for ql, x in zip(pair, xs):
            w, s, z = ql.kernel.tensors(ql._buffers, ql._prepared)
            want = torch.ops.lowbit.triton_linear(x, w, s, z, ql.bias, *ql.kernel.triton_format(ql.request).op_args())
            assert torch.equal(ql(x), want)


@needs_cuda
def test_auto_compute_dtype_follows_the_layer_to_the_gpu_and_back(monkeypatch):
    """Quantized on a CPU without bf16 units (fp32 layers), then moved: on the GPU the Triton kernel runs in bf16
    (the model's dtype once it is half), and back on the CPU in fp32 again."""
    import lowbit
    from lowbit.kernels.cpu import features

    monkeypatch.setattr(features, "cpu_has_bf16", lambda: False)
    model = torch.nn.Sequential(torch.nn.Linear(512, 256))
    lowbit.quantize_(model, lowbit.config("int4", group_size=128))
    cpu_kernel = model[0].kernel.name  # which CPU kernel depends on the host's instruction set
    assert (model[0].compute_dtype, cpu_kernel.startswith("cpu_")) == (torch.float32, True), cpu_kernel
    model.to("cuda")
    assert (model[0].compute_dtype, model[0].kernel.name) == (torch.bfloat16, "triton_int4"), model[0].kernel_reason
    model.half()
    assert (model[0].compute_dtype, model[0].kernel.name) == (torch.float16, "triton_int4")
    x = torch.randn(3, 512, device="cuda", dtype=torch.float16)
    ref = ref_out(model[0], x)
    assert ((model(x).float() - ref.float()).norm() / ref.float().norm()).item() < TOL[torch.float16]
    model.float().to("cpu")
    assert (model[0].compute_dtype, model[0].kernel.name) == (torch.float32, cpu_kernel)


@needs_cuda
def test_layer_on_second_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU: the second-device launch is checked where two are visible")
    ql = layer(FORMATS["int4-g128-asym"], 256, 512, "cuda:1", torch.bfloat16)
    x = torch.randn(4, 512, device="cuda:1", dtype=torch.bfloat16)
    ref = ref_out(ql, x)
    assert ((ql(x).float() - ref.float()).norm() / ref.float().norm()).item() < 1e-2


@needs_cuda
def test_fused_projections_under_compile_and_cuda_graph():
    """q/k/v and gate/up fused into one launch each give the unfused logits, compiled and graph-captured too."""
    import lowbit
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    lowbit.quantize_(model, lowbit.config("int4", group_size=128))
    ids = torch.randint(0, 128, (1, 8), device="cuda")
    with torch.inference_mode():
        plain = model(ids).logits.float()
        assert len(lowbit.fuse_projections(model)) == 4
        assert model.model.layers[0].self_attn.q_proj.kernel.name == "triton_int4"
        fused = model(ids).logits.float()
        layer = model.model.layers[0]
        layer.compile()
        compiled = model(ids).logits.float()
        layer._compiled_call_impl = None
        graph = torch.cuda.CUDAGraph()
        model(ids)  # warm-up outside the capture
        with torch.cuda.graph(graph):
            out = model(ids).logits
        graph.replay()
        torch.cuda.synchronize()
    for got in (fused, compiled, out.float()):
        assert ((got - plain).norm() / plain.norm()).item() < 1e-2
    assert torch.equal(fused, out.float())


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("kernel", ["gemv_kernel", "gemm_kernel", "gemv4_kernel"])
def test_kernel_source_has_no_backslash_for_inductor(kernel):
    """Inductor copies a user kernel's source with the globals it reads into a string literal of its own code,
    where a backslash (an escaped newline in an asm string, say) would be read as an escape: there is none."""
    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code

    from lowbit.kernels.triton import gemv4, kernels

    source = user_defined_triton_kernel_transitive_closure_source_code(getattr(gemv4 if kernel == "gemv4_kernel"
                                                                               else kernels, kernel))
    assert "\\" not in source
    compile(source, kernel, "exec")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("kernel", ["gemv_kernel", "gemm_kernel", "gemv4_kernel"])
def test_kernels_build_with_their_integer_arguments_as_constants(kernel):
    """torch's mutation analysis of a user kernel (which decides what torch.compile must copy) builds its IR with the
    integer arguments as constants on some versions; the kernels must build so (for an H100 target, no GPU needed),
    or torch assumes every input is written."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    from lowbit.kernels.triton import gemv4, kernels

    fn = getattr(gemv4 if kernel == "gemv4_kernel" else kernels, kernel)
    ptrs = dict(x_ptr="*bf16", xs_ptr="*fp16", w_ptr="*i32", s_ptr="*fp16", z_ptr="*u8", lut_ptr="*i32",
                b_ptr="*fp16", out_ptr="*bf16", ws_ptr="*fp32", lock_ptr="*i32")
    consts = dict(M=1, N=4096, K=14336, stride_sn=1, stride_sg=4096, stride_xm=14336, stride_om=4096,
                  chunks_per_split=14, FMT=0, GS=128, HAS_Z=True, ZERO=8.0, HAS_BIAS=False, SPLIT=8, BN=64)
    consts |= {"gemv_kernel": dict(X_SCALED=False, ACC_W=16, PF=1, PD=1),
               "gemm_kernel": dict(X_FP8=False, BM=16, CPI=1, SWAP=True, FLAT=0, PACKED=1, LATE=1),
               "gemv4_kernel": dict(DEC=1, EV=1, PD=1)}[kernel]
    if kernel == "gemv4_kernel":
        del consts["FMT"]
    source = ASTSource(fn, {n: ptrs.get(n, "constexpr") for n in fn.arg_names},
                       {(fn.arg_names.index(n),): v for n, v in consts.items()})
    target = GPUTarget("cuda", 90, 32)
    backend = triton.compiler.compiler.make_backend(target)
    context = triton._C.libtriton.ir.context()
    triton._C.libtriton.ir.load_dialects(context)
    backend.load_dialects(context)
    options = backend.parse_options({})
    source.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(), context)


def test_the_tuner_tries_int4_dequantized_to_x_dtype_from_m64():
    from lowbit.kernels.triton import tune
    from lowbit.kernels.triton.family import TritonFormat

    int4 = TritonFormat(Family.INT4, 128)
    assert {"path": "dequant"} in tune.candidates(int4, torch.bfloat16, 64)
    assert {"path": "dequant"} in tune.candidates(int4, torch.bfloat16, 4096)
    assert {"path": "dequant"} not in tune.candidates(int4, torch.bfloat16, 16)
    assert {"path": "dequant"} not in tune.candidates(TritonFormat(Family.INT8), torch.bfloat16, 256)
    assert tune.short({"path": "dequant"}) == "dequantize + cuBLAS"
