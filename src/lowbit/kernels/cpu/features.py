"""What this CPU can do, and the checks every CPU kernel shares."""

from __future__ import annotations

import functools
import os
import platform

import torch

from lowbit.errors import ConfigError

HALF = (torch.bfloat16, torch.float16, torch.float32)
ISA_ENV = "LOWBIT_CPU_ISA"  # avx2 | avx512 | none: cap the vector instructions of lowbit's own CPU kernels
ISAS = ("none", "avx2", "avx512")


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, flags) of this CPU from /proc/cpuinfo; (platform name, no flags) where it cannot be read."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return model, frozenset(flags)


def cpu_has_bf16() -> bool:
    """Whether lowbit may use bf16 dot-product units (AVX512-BF16 or AMX), which make bf16 matmuls fast.

    ``ATEN_CPU_CAPABILITY=avx2`` (or ``default``) and ``LOWBIT_CPU_ISA=avx2`` (or ``none``) say no, as on a CPU
    without them.
    """
    flags = cpu_info()[1]
    return isa() == "avx512" and ("avx512_bf16" in flags or "amx_bf16" in flags)


def isa() -> str:
    """The widest vector instructions lowbit's own CPU kernels use here: ``avx512``, ``avx2`` or ``none``.

    What the CPU has, capped by ``$LOWBIT_CPU_ISA`` and by torch's own switch ``$ATEN_CPU_CAPABILITY``
    (``avx2``, ``default``), so one setting runs torch's and lowbit's AVX2 code paths on an AVX-512 CPU.
    """
    return _isa(os.environ.get(ISA_ENV, ""), os.environ.get("ATEN_CPU_CAPABILITY", ""))


@functools.lru_cache(maxsize=16)  # every CPU kernel call asks: worked out once per setting of the two variables
def _isa(wanted: str, aten: str) -> str:
    flags = cpu_info()[1]
    have = "avx512" if {"avx512f", "avx512bw", "avx512vl"} <= flags else "avx2" if {"avx2", "fma"} <= flags else "none"
    caps = [have]
    wanted, aten = wanted.strip().lower(), aten.strip().lower()
    if wanted:
        if wanted not in ISAS:
            raise ConfigError(f"{ISA_ENV}={wanted!r} is not a known instruction set; expected one of {ISAS}, "
                              f"or unset it")
        caps.append(wanted)
    if aten in ("avx2", "default"):
        caps.append("avx2" if aten == "avx2" else "none")
    return min(caps, key=ISAS.index)


def cpu_declines(request) -> str | None:
    """Why a CPU kernel cannot run this layer's device or compute dtype (None: it can)."""
    if request.device.type != "cpu":
        return f"device is {request.device.type}, this kernel runs on cpu"
    if request.compute_dtype not in HALF:
        return f"compute dtype {request.compute_dtype} is not one of bf16/fp16/fp32"
    return None
