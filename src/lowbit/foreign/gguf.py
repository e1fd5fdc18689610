"""GGUF tensors (llama.cpp) as lowbit tensors: Q4_0 and Q8_0 map losslessly onto lowbit's integer formats; every
other type is dequantized by the ``gguf`` package, one tensor at a time, for re-quantization with a lowbit method.

A quantized GGUF weight of ne = [K, N] is stored as N rows of blocks of 32 inputs:

- Q4_0 (18 bytes a block): ``d`` fp16, then 16 bytes whose low nibbles are elements 0..15 and high nibbles
  16..31; ``w = d · (q − 8)``. That is lowbit's int4 g32 asymmetric format with zero-point 8 and fp16 scales.
- Q8_0 (34 bytes a block): ``d`` fp16, then 32 int8 ``q``; ``w = d · q``: lowbit's int8 g32 asymmetric format with
  codes q + 128 and zero-point 128 (exact for every int8, −128 included).
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.errors import FormatError
from lowbit.formats import IntFormat, pack_bits

BLOCK = 32
LOSSLESS = {"Q4_0": IntFormat(bits=4, group_size=BLOCK, symmetric=False),
            "Q8_0": IntFormat(bits=8, group_size=BLOCK, symmetric=False)}
PLAIN = ("F32", "F16", "BF16")
CHUNK_BYTES = 1 << 22  # raw bytes dequantized at a time


def blocks(data: np.ndarray, rows: int, nbytes: int) -> torch.Tensor:
    """Raw GGUF bytes of ``rows`` rows → uint8 [rows, blocks, nbytes]."""
    return torch.from_numpy(np.array(data, dtype=np.uint8, copy=True).reshape(rows, -1, nbytes))  # owned, writable


def canonical(type_name: str, data: np.ndarray, rows: int) -> dict[str, torch.Tensor]:
    """A Q4_0 or Q8_0 weight's raw bytes → the canonical tensors of ``LOSSLESS[type_name]``."""
    if type_name == "Q4_0":
        b = blocks(data, rows, 2 + BLOCK // 2)
        qs = b[..., 2:]
        codes = torch.cat([qs & 0x0F, qs >> 4], dim=-1).reshape(rows, -1)  # elements 0..15, then 16..31
        return {"qweight": pack_bits(codes, 4), "scales": _scales(b), "zeros": _zeros(b, 8)}
    if type_name == "Q8_0":
        b = blocks(data, rows, 2 + BLOCK)
        codes = (b[..., 2:].view(torch.int8).to(torch.int16) + 128).to(torch.uint8).reshape(rows, -1)
        return {"qweight": codes, "scales": _scales(b), "zeros": _zeros(b, 128)}
    raise FormatError(f"GGUF type {type_name} has no lossless lowbit format; expected one of {sorted(LOSSLESS)}")


def _scales(b: torch.Tensor) -> torch.Tensor:
    return b[..., :2].contiguous().view(torch.float16).reshape(b.shape[0], -1)


def _zeros(b: torch.Tensor, zero: int) -> torch.Tensor:
    return torch.full(b.shape[:2], zero, dtype=torch.uint8)


def dequantized(name: str, type_name: str, data: np.ndarray) -> np.ndarray:
    """Any tensor the ``gguf`` package can dequantize → float32 numpy; another type is an error naming it.

    Block types are dequantized a few rows at a time into the output, so the package's float temporaries stay
    small (for SmolLM2's Q8_0 embedding, 16 MB instead of two more copies of its 113 MB)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType[type_name]
    try:
        if data.dtype != np.uint8 or data.ndim < 2:
            return dequantize(data, qtype).astype(np.float32, copy=False)
        rows = data.reshape(-1, data.shape[-1])
        step = max(1, CHUNK_BYTES // max(1, rows.shape[1]))
        first = dequantize(rows[:step], qtype).astype(np.float32, copy=False)
        out = np.empty((rows.shape[0], first.shape[1]), dtype=np.float32)
        out[:step] = first
        del first
        for start in range(step, rows.shape[0], step):
            out[start:start + step] = dequantize(rows[start:start + step], qtype)
        return out.reshape(*data.shape[:-1], out.shape[-1])
    except NotImplementedError:
        raise FormatError(f"GGUF tensor {name} has type {type_name}, which lowbit cannot read (the gguf package has no "
                          f"dequantizer for it); expected F32/F16/BF16, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, K-quants or IQ "
                          "types; convert the file with llama.cpp's llama-quantize") from None
