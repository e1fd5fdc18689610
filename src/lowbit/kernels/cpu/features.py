"""What this CPU can do, and the checks every CPU kernel shares."""

from __future__ import annotations

import functools

import torch

HALF = (torch.bfloat16, torch.float16, torch.float32)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 dot-product units (AVX512-BF16 or AMX), which make bf16 matmuls fast."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_declines(request) -> str | None:
    """Why a CPU kernel cannot run this layer's device or compute dtype (None: it can)."""
    if request.device.type != "cpu":
        return f"device is {request.device.type}, this kernel runs on cpu"
    if request.compute_dtype not in HALF:
        return f"compute dtype {request.compute_dtype} is not one of bf16/fp16/fp32"
    return None
