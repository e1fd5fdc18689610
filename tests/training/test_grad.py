"""Gradients through quantized layers, on every kernel path: dx equals the gradient through the dense weight that
the stored tensors represent (decoded independently from the stored tensors, not from the layer), the stored
tensors stay frozen, and backward keeps no dense weight (nothing is saved between forward and backward).

Triton kernels run in Triton's interpreter on the CPU (as their conformance suite does), in a subprocess."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from kernel_conformance import FORMATS, in_interpreter, storable, stored

from lowbit.errors import TrainingError
from lowbit.kernels import get_kernel, kernel_request, kernels
from lowbit.kernels.triton import TritonKernel
from lowbit.nn import QuantLinear
from lowbit.nn.training import format_trains

CPU_KERNELS = ("reference", "cpu_int4", "cpu_int8", "cpu_gemv4", "cpu_gemv8", "cpu_dot4", "cpu_dot8", "cpu_dense")
SHAPE = (80, 512)  # N, K: N a multiple of 16 (cpu_int4) off its 64-row blocks; storable by every format
TRAINS = [name for name, fmt in FORMATS.items() if format_trains(fmt)]
NO_BACKWARD = [name for name, fmt in FORMATS.items() if not format_trains(fmt)]


def cases(device: str, compute: torch.dtype, kernels) -> list[tuple[str, str]]:
    n, k = SHAPE
    return [(name, kernel) for name in TRAINS for kernel in kernels if storable(FORMATS[name], n, k)
            and get_kernel(kernel).accepts(kernel_request(FORMATS[name], (n, k), device, compute))[0]]


def grad_case(name: str, kernel: str, compute: torch.dtype, device: str = "cpu") -> dict:
    """dx (and the bias's gradient) through the layer vs through the dense weight decoded from the stored tensors."""
    fmt, (n, k) = FORMATS[name], SHAPE
    torch.manual_seed(n + k)
    canon = stored(fmt, torch.randn(n, k) / k**0.5)
    layer = QuantLinear(k, n, True, fmt, device=device)
    layer.load_quantized({t: v.clone() for t, v in canon.items()})
    layer.bias = torch.nn.Parameter(torch.randn(n), requires_grad=True)
    layer.prepare(compute, kernel)
    w = fmt.decode(canon, torch.float32)  # the dense weight, from the stored tensors themselves
    x = torch.randn(2, 5, k, requires_grad=True)
    r = torch.randn(2, 5, n)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        y = layer(x)
    (y * r).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    b_ref = layer.bias.detach().clone().requires_grad_(True)
    (torch.nn.functional.linear(x_ref, w, b_ref) * r).sum().backward()
    with torch.no_grad():
        y_plain = layer(x)
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    return {"kernel": layer.kernel.name, "dx": rel(x.grad, x_ref.grad), "db": rel(layer.bias.grad, b_ref.grad),
            "same_forward": bool(torch.equal(y.detach(), y_plain)), "saved": saved,
            "frozen": all(not t.requires_grad for t in layer.canonical_tensors().values())}


@pytest.mark.parametrize("name, kernel", cases("cpu", torch.float32, CPU_KERNELS), ids=str)
def test_input_gradient_is_the_dense_weights_on_cpu(name, kernel):
    r = grad_case(name, kernel, torch.float32)
    assert r["kernel"] == kernel and r["same_forward"] and r["frozen"]
    assert r["dx"] < 1e-6 and r["db"] < 1e-6, r
    assert r["saved"] == [], f"backward must keep no tensor from forward (no dense weight, no input): {r['saved']}"


@pytest.mark.parametrize("name, kernel", cases("cpu", torch.bfloat16, CPU_KERNELS), ids=str)
def test_input_gradient_with_a_bf16_kernel(name, kernel):
    # the forward runs in bf16; the backward multiplies in the gradient's dtype (fp32 here) by the exact weight
    r = grad_case(name, kernel, torch.bfloat16)
    assert r["kernel"] == kernel and r["dx"] < 1e-6 and r["saved"] == [], r


def test_every_kernel_path_is_covered():
    covered = {kernel for _, kernel in cases("cpu", torch.float32, CPU_KERNELS)}
    assert covered == set(CPU_KERNELS)
    assert {"int8-channel-sym", "int4-g128-asym", "int4-g64-float-zero", "nf4-b64", "fp4-b32", "fp8-channel",
            "mxfp4"} <= set(TRAINS)  # int8, int4, hqq's layout, nf4, fp4, fp8, mxfp4
    assert set(NO_BACKWARD) == {"w8a8", "fp8-channel-dynamic"}


@pytest.mark.parametrize("name", NO_BACKWARD)
def test_a_format_without_backward_says_which_train(name):
    fmt, (n, k) = FORMATS[name], SHAPE
    layer = QuantLinear(k, n, False, fmt, device="cpu")
    layer.load_quantized(stored(fmt, torch.randn(n, k)))
    x = torch.randn(3, k)
    assert layer(x).shape == (3, n)  # inference is unchanged
    with pytest.raises(TrainingError, match=r"no backward; expected one of the formats that train: .*nf4") as e:
        layer(x.requires_grad_(True))
    assert fmt.describe() in str(e.value) and "\n" not in str(e.value)


def test_gradient_flows_through_a_frozen_layer_to_a_trainable_one_before_it():
    fmt = FORMATS["int4-g128-asym"]
    first = torch.nn.Linear(64, 512)
    layer = QuantLinear(512, 80, False, fmt, device="cpu")
    layer.load_quantized(fmt.encode(torch.randn(80, 512)))
    layer(first(torch.randn(4, 64))).square().sum().backward()
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


INTERPRETER_SCRIPT = r'''
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import kernel_conformance as conformance
exec(conformance.INTERPRETER_PATCH)
import test_grad
kernels = [k for k in ("triton_int4", "triton_codebook", "triton_int8", "triton_fp8")]
out = {f"{name} {kernel}": test_grad.grad_case(name, kernel, torch.float16)
       for name, kernel in test_grad.cases("cpu", torch.float16, kernels)}
print(json.dumps(out))
'''


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (pip install -e '.[test]' brings it)")
def test_input_gradient_through_the_triton_kernels_in_the_interpreter():
    from pathlib import Path

    here = Path(__file__).resolve().parent
    results = in_interpreter(INTERPRETER_SCRIPT, str(here))
    kernels = {r["kernel"] for r in results.values()}
    assert kernels == {"triton_int4", "triton_codebook", "triton_int8", "triton_fp8"}, json.dumps(results)[:500]
    bad = {c: r for c, r in results.items()
           if not (r["dx"] < 1e-6 and r["db"] < 1e-6 and r["same_forward"] and r["frozen"] and r["saved"] == [])}
    assert not bad, bad
