"""The C side of the CPU decode step (``step.c``): its descriptors as ctypes structures, and each projection's
descriptor from the kernel that runs it (``Kernel.native_call``: the same C function and tensors as the layer's own
forward). The model walk that fills them is ``lowbit.decode_cpu``.
"""

from __future__ import annotations

import ctypes
import dataclasses

import torch

from lowbit.kernels.cpu.native import ptr, threads_for

KINDS = {"none": 0, "dense": 1, "gemv4": 2, "gemv8": 3, "dot4": 4, "dot8": 5}
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "gelu": 2}
_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


@dataclasses.dataclass
class NativeCall:
    """One projection as ``step.c`` runs it: which C kernel, on which tensors (held here, so they outlive the call)."""

    kind: str
    codes: torch.Tensor  # the fp32 [n, k] weight for "dense"
    n: int
    k: int
    group: int = 0
    block: int = 0
    fp8: bool = False
    table: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    bias: torch.Tensor | None = None


class Linear(ctypes.Structure):
    _fields_ = [("kind", _I), ("n", _I), ("k", _I), ("group", _I), ("block", _I), ("fp8", _I), ("threads", _I),
                ("codes", _P), ("table", _P), ("s", _P), ("o", _P), ("bias", _P)]


class Block(ctypes.Structure):
    _fields_ = [("attn_in", Linear * 3), ("attn_out", Linear), ("mlp_in", Linear * 2), ("mlp_out", Linear),
                ("q_off", _I), ("k_off", _I), ("v_off", _I), ("gate_off", _I), ("up_off", _I),
                *((name, _P) for name in ("norm_in", "norm_attn_out", "norm_mlp_in", "norm_mlp_out", "q_norm",
                                          "k_norm", "cos", "sin")),
                ("window", _I), ("k_cache", _P), ("v_cache", _P)]


class Model(ctypes.Structure):
    _fields_ = [*((name, _I) for name in ("n_blocks", "hidden", "heads", "kv_heads", "head_dim", "inter", "max_len",
                                          "act")),
                ("eps", _F), ("scale", _F), ("softcap", _F), ("norm_out", _P), ("head", Linear),
                ("blocks", ctypes.POINTER(Block))]


def linear(call: NativeCall | None) -> Linear:
    """The C descriptor of ``call`` (None: an unused slot)."""
    if call is None:
        return Linear(kind=KINDS["none"])
    return Linear(kind=KINDS[call.kind], n=call.n, k=call.k, group=call.group, block=call.block, fp8=int(call.fp8),
                  threads=threads_for(call.n, call.k), codes=ptr(call.codes), table=ptr(call.table),
                  s=ptr(call.scales), o=ptr(call.offsets), bias=ptr(call.bias))
