"""The conformance suite every kernel's tests subclass: each layer a kernel accepts runs against the reference.

A kernel's test module defines ``class TestCpuInt4(KernelConformance)`` with ``kernel = "cpu_int4"`` and
``accepts = {...}`` and gets, for EVERY case of the catalogue below (formats x awkward shapes x compute dtypes)
that the kernel accepts (``handles``, then ``can_implement``), whether or not automatic selection would pick it:

- the layer forced to this kernel against the format's ``reference_linear`` in fp32 (relative error under the
  compute dtype's bound), output shape and dtype kept, the same bits when run twice;
- ``state_dict`` giving back the stored tensors exactly (kernels that drop the canonical copy rebuild it);
- the catalogue formats it accepts being exactly ``accepts``, so a kernel that stops taking a format fails.

Kernels for CUDA (``TritonKernelConformance``: the Triton ones) run the same checks on the CPU through Triton's
interpreter (``TRITON_INTERPRET=1``, one subprocess per kernel class); the GPU tests run them on the GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from lowbit.errors import FormatError
from lowbit.formats import CodebookFormat, Fp8Format, IntFormat, MxFormat, W8A8Format
from lowbit.kernels import get_kernel, kernel_request
from lowbit.nn import QuantLinear

FORMATS = {
    "int2-g32-asym": IntFormat(2, 32, False),
    "int3-g64-sym": IntFormat(3, 64, True),
    "int4-g16-asym": IntFormat(4, 16, False),
    "int4-g32-asym": IntFormat(4, 32, False),
    "int4-g64-sym": IntFormat(4, 64, True),
    "int4-g64-float-zero": IntFormat(4, 64, False, float_zero=True),
    "int4-g128-asym": IntFormat(4, 128, False),
    "int4-g128-sym": IntFormat(4, 128, True),
    "int4-g128-bf16-scales": IntFormat(4, 128, False, scale_dtype=torch.bfloat16),
    "int4-g256-asym": IntFormat(4, 256, False),
    "int4-channel-asym": IntFormat(4, None, False),
    "int4-g32-g_idx": IntFormat(4, 32, False, g_idx=True),
    "int8-channel-sym": IntFormat(8, None, True),
    "int8-g128-asym": IntFormat(8, 128, False),
    "nf4-b64": CodebookFormat("nf4", 64),
    "nf4-b64-dq": CodebookFormat("nf4", 64, double_quant=True),
    "fp4-b32": CodebookFormat("fp4", 32),
    "fp8-channel": Fp8Format(),
    "fp8-channel-dynamic": Fp8Format(activations="dynamic"),
    "fp8-block128": Fp8Format(128),
    "mxfp4": MxFormat(),
    "w8a8": W8A8Format(),
}
SHAPES = [(72, 512), (40, 384), (1, 128), (208, 1280)]  # N off every tile and row block; K of 1 to 10 chunks of 128
MS = (1, 3, 33, 130)  # decode, a few tokens, a prefill tile and a bit, a long prefill (int8 dense path)
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def stored(fmt, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors ``fmt`` stores for ``w``; HQQ-style zeros made fractional, a g_idx made out of order."""
    if not isinstance(fmt, IntFormat):
        return fmt.encode(w)
    t = dataclasses.replace(fmt, g_idx=False).encode(w)
    if fmt.float_zero:
        dtype = fmt.expected_tensors(*w.shape)["zeros"][1]
        t["zeros"] = (t["zeros"].float() + torch.rand_like(t["zeros"].float()) - 0.5).to(dtype)
    if fmt.g_idx:
        t["g_idx"] = (torch.randperm(w.shape[1]) // fmt.group_size).to(torch.int32).to(w.device)
    return t


def storable(fmt, n: int, k: int) -> bool:
    """Whether an [n, k] weight can be stored as ``fmt`` (whole groups included)."""
    try:
        fmt.expected_tensors(n, k)
    except FormatError:
        return False
    return not isinstance(fmt, IntFormat) or fmt.group_size is None or k % fmt.group_size == 0


def accepted(kernel_name: str, device: str, computes, shapes=SHAPES) -> list[tuple[str, tuple[int, int], torch.dtype]]:
    """The catalogue cases (format name, shape, compute dtype) whose request this kernel accepts on ``device``."""
    kernel = get_kernel(kernel_name)
    return [(name, (n, k), compute) for name, fmt in FORMATS.items() for n, k in shapes if storable(fmt, n, k)
            for compute in computes if kernel.accepts(kernel_request(fmt, (n, k), device, compute))[0]]


def run_case(kernel_name: str, name: str, shape: tuple[int, int], compute: torch.dtype, device: str,
             ms=MS) -> dict:
    """One accepted case: the worst relative error over ``ms`` and whether shapes, dtypes, reruns and the saved
    tensors came out right."""
    fmt, (n, k) = FORMATS[name], shape
    torch.manual_seed(n * 10007 + k)
    canon = stored(fmt, torch.randn(n, k) / k**0.5)
    layer = QuantLinear(k, n, True, fmt, device=device, dtype=compute)
    layer.load_quantized({t: v.clone().to(device) for t, v in canon.items()})
    layer.bias = torch.nn.Parameter(torch.randn(n, device=device).to(compute), requires_grad=False)
    layer.prepare(compute, kernel_name)
    worst, ok = 0.0, layer.kernel.name == kernel_name
    for m in ms:
        x = torch.randn(2, m, k, device=device)
        seen = x.to(compute).float()  # what the kernel is given (formats that quantize activations start from it)
        ref = fmt.reference_linear(seen, {t: v.to(device) for t, v in canon.items()}, layer.bias.float())
        got = layer(x)
        ok &= got.shape == (2, m, n) and got.dtype == x.dtype and torch.equal(layer(x), got)
        worst = max(worst, ((got - ref).norm() / ref.norm().clamp(min=1e-30)).item())
    state = layer.state_dict()
    ok &= all(torch.equal(state[t].cpu(), canon[t]) for t in canon)
    return {"rel": worst, "ok": bool(ok), "tol": TOL[compute]}


def run_all(kernel_name: str, device: str, computes, shapes=SHAPES, ms=MS) -> dict[str, dict]:
    return {f"{name} {list(shape)} {str(compute).removeprefix('torch.')}": run_case(kernel_name, name, shape,
                                                                                     compute, device, ms)
            for name, shape, compute in accepted(kernel_name, device, computes, shapes)}


def failures(results: dict[str, dict]) -> dict[str, dict]:
    return {case: r for case, r in results.items() if not (r["ok"] and r["rel"] < r["tol"])}


INTERPRETER_PATCH = r'''
import numpy as np
import triton.runtime.interpreter as interp

# Triton's interpreter turns scalar arguments into one-element arrays, which numpy >= 2 no longer converts
# with int(); give it the element instead (only the interpreter's subprocesses run with the patch).
_patch = getattr(interp, "_patch_lang_tensor", None)
if _patch is not None:
    def _patched(tensor, scope):
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))
    interp._patch_lang_tensor = _patched
'''

INTERPRETER_SCRIPT = r'''
import json, sys
import torch

sys.path.insert(0, sys.argv[1])
import kernel_conformance as conformance

exec(conformance.INTERPRETER_PATCH)

kernel, computes = sys.argv[2], [getattr(torch, c) for c in sys.argv[3].split(",")]
shapes = [tuple(s) for s in json.loads(sys.argv[4])]
ms = json.loads(sys.argv[5])
names = {name for name, _, _ in conformance.accepted(kernel, "cpu", computes, conformance.SHAPES)}
print(json.dumps({"accepts": sorted(names),
                  "results": conformance.run_all(kernel, "cpu", computes, shapes, ms)}))
'''


def in_interpreter(script: str, *args: str) -> dict:
    """Run ``script`` (given this folder as ``sys.argv[1]``, then ``args``) in a subprocess under Triton's
    interpreter on the CPU; the JSON its last line prints."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    here = Path(__file__).resolve().parent
    env["PYTHONPATH"] = str(here.parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", script, str(here), *args], capture_output=True, text=True, env=env,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def interpreter_run(kernel_name: str, computes, shapes, ms) -> dict:
    """``run_all`` in the interpreter: {"accepts": [format names], "results": {case: result}}."""
    return in_interpreter(INTERPRETER_SCRIPT, kernel_name, ",".join(str(c).removeprefix("torch.") for c in computes),
                          json.dumps([list(s) for s in shapes]), json.dumps(list(ms)))


class KernelConformance:
    """Subclass with ``kernel`` (a registered name) and ``accepts`` (the catalogue format names it takes); a CUDA
    kernel subclasses :class:`TritonKernelConformance` instead, which checks it in Triton's interpreter."""

    kernel: ClassVar[str] = ""
    accepts: ClassVar[set[str]] = set()
    computes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.bfloat16, torch.float16)
    interpreter_computes: ClassVar[tuple[torch.dtype, ...]] = (torch.float16,)  # numpy has no bf16: on the GPU
    interpreter_shapes: ClassVar[list[tuple[int, int]]] = [(72, 512), (40, 384)]
    interpreter_ms: ClassVar[tuple[int, ...]] = (1, 3, 33)
    interpreter_tol: ClassVar[dict[str, float]] = {}  # format name → a looser bound where the interpreter differs
    min_tol: ClassVar[float] = 0.0  # a looser bound for every case: kernels that round activations (cpu_dot4/8)

    def test_registered_under_its_name(self):
        assert get_kernel(self.kernel).name == self.kernel

    def test_every_accepted_layer_matches_the_reference_on_cpu(self):
        names = {name for name, _, _ in accepted(self.kernel, "cpu", self.computes)}
        assert names == self.accepts, f"{self.kernel} accepts {sorted(names)}"
        results = run_all(self.kernel, "cpu", self.computes)
        for result in results.values():
            result["tol"] = max(result["tol"], self.min_tol)
        assert results and not failures(results), failures(results)

    def test_every_accepted_layer_matches_the_reference_on_cuda(self):
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device: the GPU machine runs this (benchmarks/gpu_run.sh)")
        results = run_all(self.kernel, "cuda", self.computes)
        if not results:
            pytest.skip(f"{self.kernel} runs no layer on cuda")
        assert not failures(results), failures(results)



class TritonKernelConformance(KernelConformance):
    """A CUDA kernel: on the CPU it runs in Triton's interpreter instead (and on the GPU where there is one)."""

    test_every_accepted_layer_matches_the_reference_on_cpu = None  # not collected: it runs no layer on the CPU

    def test_every_accepted_layer_matches_the_reference_in_the_interpreter(self):
        if importlib.util.find_spec("triton") is None:
            pytest.skip("triton is not installed (pip install -e '.[test]' brings it)")
        out = interpreter_run(self.kernel, self.interpreter_computes, self.interpreter_shapes, self.interpreter_ms)
        assert set(out["accepts"]) == self.accepts, f"{self.kernel} accepts {out['accepts']}"
        results = out["results"]
        for case, result in results.items():
            result["tol"] = self.interpreter_tol.get(case.split(" ")[0], result["tol"])
        assert results and not failures(results), failures(results)
