"""The Triton kernels' arithmetic, checked on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``).

The interpreter runs each program of the grid in turn with numpy, so this checks the index math, masks, the
int4/nf4/int8/fp8 decoding, the factored scales and zeros, and split-K's last-program reduction against the
reference op, everywhere triton installs (CI included). Speed, PTX and the CUDA-only paths (inline ``lop3``,
``torch._scaled_mm``) are left to tests/kernels/test_triton.py on the GPU machine.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install -e '.[test]' brings it)")

SCRIPT = r'''
import json, sys
import numpy as np
import torch
import triton.runtime.interpreter as interp

# Triton's interpreter turns scalar arguments into one-element arrays, which numpy >= 2 no longer converts
# with int(); give it the element instead (only this process runs with the patch).
_patch = getattr(interp, "_patch_lang_tensor", None)
if _patch is not None:
    def _patched(tensor, scope):
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))
    interp._patch_lang_tensor = _patched

from lowbit.formats import CodebookFormat, Fp8Format, IntFormat
from lowbit.formats.codebook import codebook_quantize
from lowbit.formats.fp8 import quantize_channel
from lowbit.kernels.triton import TritonCodebookKernel, TritonFp8Kernel, TritonInt4Kernel, TritonInt8Kernel, ops
from lowbit.rtn import rtn_quantize

FORMATS = {
    "int4-g32": (IntFormat(4, 32, False), TritonInt4Kernel()),
    "int4-g128-sym": (IntFormat(4, 128, True), TritonInt4Kernel()),
    "int4-g64-hqq": (IntFormat(4, 64, False, float_zero=True), TritonInt4Kernel()),
    "int4-channel": (IntFormat(4, None, False), TritonInt4Kernel()),
    "int4-g256": (IntFormat(4, 256, False), TritonInt4Kernel()),
    "nf4-b64": (CodebookFormat("nf4", 64), TritonCodebookKernel()),
    "int8": (IntFormat(8, None, True), TritonInt8Kernel()),
    "fp8": (Fp8Format(), TritonFp8Kernel()),
}
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
]
N, K = 72, 512  # N: not a multiple of any tile; K: 4 chunks, so every split above divides it

def stored(fmt, w):
    if isinstance(fmt, IntFormat):
        t = rtn_quantize(w, fmt)
        if fmt.float_zero:
            t["zeros"] = (t["zeros"].float() + torch.rand_like(t["zeros"].float()) - 0.5).to(fmt.scale_dtype)
        return t
    return codebook_quantize(w, fmt) if isinstance(fmt, CodebookFormat) else quantize_channel(w)

torch.manual_seed(0)
out = {}
for name, (fmt, kernel) in FORMATS.items():
    t = stored(fmt, torch.randn(N, K) / K ** 0.5)
    w, s, z = kernel.tensors(t, kernel.layout(t, fmt))
    bias = torch.randn(N).half()
    for i, cfg in enumerate(CONFIGS):
        for m in (1, 3):
            x = torch.randn(m, K).half()
            ref = torch.ops.lowbit.linear_ref(x.float(), [t[n] for n in fmt.tensor_names()], fmt.key(), bias.float())
            got = ops.launch(x, w, s, z, bias, kernel.op_key(fmt), cfg)
            again = ops.launch(x, w, s, z, bias, kernel.op_key(fmt), cfg)
            out[f"{name} cfg{i} M={m}"] = {
                "rel": ((got.float() - ref).norm() / ref.norm()).item(),
                "shape": list(got.shape), "dtype": str(got.dtype), "same_again": bool(torch.equal(got, again))}
out["counters_left"] = int(ops.locks(torch.device("cpu")).count_nonzero())
print(json.dumps(out))
'''


def test_kernels_match_the_reference_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results.pop("counters_left") == 0  # every split-K launch leaves its tile counters at zero
    assert len(results) == 8 * 8 * 2  # formats x configs x M
    bad = {k: v for k, v in results.items()
           if not (v["rel"] < 3e-3 and v["dtype"] == "torch.float16" and v["same_again"])}
    assert not bad, f"kernels differ from the reference op (fp16 out, relative error < 3e-3): {bad}"
    shapes = {tuple(v["shape"]) for v in results.values()}
    assert shapes == {(1, 72), (3, 72)}
