"""lowbit formats → AWQ GEMM tensors (``quant_method: awq``, ``version: gemm``, as AutoAWQ and GPTQModel write
them), for the tools and servers that read AWQ (transformers, vLLM's AWQ / AWQ-Marlin kernels).

Only 4-bit integer layers with groups, integer (or no) zero-points, no act-order and fp16 or bf16 scales map
exactly: ``qweight`` int32 [K, N/8] and ``qzeros`` int32 [G, N/8] hold eight 4-bit values per word packed along N
in AWQ's order [0, 2, 4, 6, 1, 3, 5, 7] (``lowbit.foreign.awq.pack_columns``), zero-points as they are (no −1;
symmetric layers store codes c + 8 over zero-point 8), ``scales`` [G, N]. AWQ decodes ``(q − z) · s``, as lowbit's
asymmetric format does, so asymmetric and symmetric models both map.
"""

from __future__ import annotations

import torch

from lowbit.errors import FormatError
from lowbit.formats import IntFormat, WeightFormat
from lowbit.foreign.awq import pack_columns
from lowbit.foreign.export_common import int_refusal, integer_zeros, one_grid, unsigned_codes


def refusal(fmt: WeightFormat) -> str | None:
    why = int_refusal(fmt, "AWQ", (torch.float16, torch.bfloat16))
    if why:
        return why
    if fmt.bits != 4:
        return (f"{fmt.describe()} has {fmt.bits}-bit codes and AWQ stores 4-bit ones only (so do vLLM's AWQ "
                "kernels); export as compressed-tensors, or quantize with bits=4")
    if fmt.group_size is None:
        return (f"{fmt.describe()} has one scale per output channel and AWQ stores groups; export as "
                "compressed-tensors, or quantize with group_size=128")
    if fmt.g_idx:
        return (f"{fmt.describe()} keeps act-order groups (g_idx), which AWQ cannot hold; export as gptq, or quantize "
                "without act_order")
    return None


def config(layers: dict, ignore: list[str]) -> dict:
    fmt = one_grid(layers, "AWQ")
    return {"quant_method": "awq", "bits": 4, "group_size": fmt.group_size, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": ignore or None}


def tensors(fmt: IntFormat, canonical: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    why = refusal(fmt)
    if why:
        raise FormatError(why)
    codes = unsigned_codes(fmt, canonical)  # [N, K]
    if codes.shape[0] % 8:
        raise FormatError(f"a layer with {codes.shape[0]} outputs cannot be packed as AWQ, which packs eight outputs "
                          "per int32 word; expected a multiple of 8: export as compressed-tensors")
    return {"qweight": pack_columns(codes.T.contiguous()), "qzeros": pack_columns(integer_zeros(fmt, canonical).T),
            "scales": canonical["scales"].T.contiguous()}
