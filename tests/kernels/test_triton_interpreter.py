"""The Triton kernels' launch configurations, checked on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``).

The interpreter runs each program of the grid in turn with numpy. The conformance suite (kernel_conformance.py) runs
every Triton kernel through the op at its default configurations; this runs the launcher with configurations the tuner
may pick that the defaults do not take (GEMV prefetch variants, split-K, several chunks a step, FLAT tiles, gemv4's
decodes), checking the index math, masks, decoding, the factored scales and zeros, and split-K's last-program
reduction against the reference op, everywhere triton installs (CI included). Speed, PTX and the CUDA-only paths
(inline ``lop3``, ``torch._scaled_mm``) are left to tests/kernels/test_triton.py on the GPU machine.
"""

import importlib.util

import pytest
from kernel_conformance import in_interpreter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install -e '.[test]' brings it)")

SCRIPT = r'''
import json, sys
import torch

sys.path.insert(0, sys.argv[1])
import kernel_conformance as conformance

exec(conformance.INTERPRETER_PATCH)
from lowbit.kernels import get_kernel, kernel_request
from lowbit.kernels.triton import ops

FORMATS = {"int4-g32": "int4-g32-asym", "int4-g128-sym": "int4-g128-sym", "int4-g64-hqq": "int4-g64-float-zero",
           "int4-channel": "int4-channel-asym", "int4-g256": "int4-g256-asym", "nf4-b64": "nf4-b64",
           "int8": "int8-channel-sym", "fp8": "fp8-channel"}
KERNELS = {"int4": "triton_int4", "nf4": "triton_codebook", "int8": "triton_int8", "fp8": "triton_fp8"}
CONFIGS = [
    {"path": "gemv", "BN": 16, "CPI": 1, "SPLIT_K": 1, "num_warps": 2, "num_stages": 1, "PF": 1, "PD": 1},
    {"path": "gemv", "BN": 32, "CPI": 1, "SPLIT_K": 2, "num_warps": 4, "num_stages": 1, "PF": 0, "PD": 1},
    {"path": "gemv", "BN": 64, "CPI": 1, "SPLIT_K": 4, "num_warps": 4, "num_stages": 1, "PF": 1, "PD": 1},
    {"path": "gemv", "BN": 32, "CPI": 1, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3, "PF": 0, "PD": 0},
    {"path": "gemv", "BN": 64, "CPI": 1, "SPLIT_K": 2, "num_warps": 4, "num_stages": 2, "PF": 1, "PD": 0},
    {"path": "gemm", "BM": 16, "BN": 32, "CPI": 1, "SPLIT_K": 2, "num_warps": 4, "num_stages": 2, "SWAP": False},
    {"path": "gemm", "BM": 16, "BN": 64, "CPI": 2, "SPLIT_K": 1, "num_warps": 4, "num_stages": 2, "SWAP": True},
    {"path": "gemm", "BM": 16, "BN": 32, "CPI": 1, "SPLIT_K": 2, "num_warps": 4, "num_stages": 2, "SWAP": True,
     "FLAT": 1},
    # gemv4 (int4 with one group a chunk; other formats run gemv with the same tiles)
    {"path": "gemv4", "BN": 32, "CPI": 1, "SPLIT_K": 1, "num_warps": 4, "num_stages": 1, "DEC": 0, "EV": 1, "PD": 0},
    {"path": "gemv4", "BN": 64, "CPI": 1, "SPLIT_K": 4, "num_warps": 4, "num_stages": 1, "DEC": 1, "EV": 1, "PD": 1},
    {"path": "dequant"},  # int4: dequantized to x's dtype, then F.linear; other formats: the fused GEMM
]
N, K = 72, 512  # N: not a multiple of any tile; K: 4 chunks, so every split above divides it

torch.manual_seed(0)
out = {}
for name, case in FORMATS.items():
    fmt = conformance.FORMATS[case]
    kernel = get_kernel(KERNELS[name.split("-")[0]])
    request = kernel_request(fmt, (N, K), "cpu", torch.float16)
    t = conformance.stored(fmt, torch.randn(N, K) / K ** 0.5)
    w, s, z = kernel.tensors(t, kernel.layout(t, request))
    tf = kernel.triton_format(request)
    bias = torch.randn(N).half()
    for i, cfg in enumerate(CONFIGS):
        for m in (1, 3):
            x = torch.randn(m, K).half()
            ref = torch.ops.lowbit.linear_ref(x.float(), [t[n] for n in fmt.tensor_names()], fmt.key(), bias.float())
            got = ops.launch(x, w, s, z, bias, tf, cfg)
            again = ops.launch(x, w, s, z, bias, tf, cfg)
            out[f"{name} cfg{i} M={m}"] = {
                "rel": ((got.float() - ref).norm() / ref.norm()).item(),
                "shape": list(got.shape), "dtype": str(got.dtype), "same_again": bool(torch.equal(got, again))}
out["counters_left"] = int(ops.locks(torch.device("cpu")).count_nonzero())
print(json.dumps(out))
'''


def test_kernels_match_the_reference_in_the_interpreter():
    results = in_interpreter(SCRIPT)
    assert results.pop("counters_left") == 0  # every split-K launch leaves its tile counters at zero
    assert len(results) == 8 * 11 * 2  # formats x configs x M
    bad = {k: v for k, v in results.items()
           if not (v["rel"] < 3e-3 and v["dtype"] == "torch.float16" and v["same_again"])}
    assert not bad, f"kernels differ from the reference op (fp16 out, relative error < 3e-3): {bad}"
    shapes = {tuple(v["shape"]) for v in results.values()}
    assert shapes == {(1, 72), (3, 72)}


DEQUANT = r'''
import json, sys
import torch

sys.path.insert(0, sys.argv[1])
import kernel_conformance as conformance

exec(conformance.INTERPRETER_PATCH)
from lowbit.kernels import get_kernel, kernel_request
from lowbit.kernels.triton.dequant import dequantize4

torch.manual_seed(0)
out = {}
for case in ("int4-g32-asym", "int4-g64-sym", "int4-g64-float-zero", "int4-g128-bf16-scales", "int4-g256-asym",
             "int4-channel-asym"):
    fmt = conformance.FORMATS[case]
    kernel = get_kernel("triton_int4")
    for n in (72, 16):  # 72: a partial block of rows and a partial program
        request = kernel_request(fmt, (n, 512), "cpu", torch.float16)
        t = conformance.stored(fmt, torch.randn(n, 512) / 512 ** 0.5)
        w, s, z = kernel.tensors(t, kernel.layout(t, request))
        for dtype in (torch.float16, torch.float32):
            got, _ = dequantize4(w, s, z, kernel.triton_format(request).group, 512, dtype)
            want = fmt.decode(t, torch.float32).to(dtype)
            out[f"{case} N={n} {dtype}"] = int((got != want).sum())
print(json.dumps(out))
'''


def test_int4_dequantized_in_one_launch_is_the_reference_decode_bit_for_bit():
    """The ``dequant`` path's weight: every format of int4 the kernels take (groups, symmetric, float zeros, bf16
    scales, per channel), partial row blocks, fp16 and fp32; each weight equal to the reference's decode."""
    results = in_interpreter(DEQUANT)
    assert len(results) == 6 * 2 * 2
    assert not {k: v for k, v in results.items() if v}, results
