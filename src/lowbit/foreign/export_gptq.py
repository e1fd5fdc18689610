"""lowbit formats → GPTQ tensors (``quant_method: gptq``, checkpoint_format ``gptq``: v1, zero-points stored − 1), for
the tools and servers that read GPTQ (transformers + GPTQModel, vLLM's GPTQ / Marlin kernels for 4 and 8 bits).

Only symmetric integer layers with fp16 scales map exactly: lowbit's signed codes c become q = c + 2^(b−1) packed
along K (``qweight`` int32 [K·b/32, N], the transpose of lowbit's code bytes), every zero-point is 2^(b−1) (stored
as 2^(b−1) − 1, packed along N), ``scales`` [G, N], ``g_idx`` [K] (act-order groups kept, ``desc_act``).
Asymmetric layers are refused: GPTQ can store them, but vLLM's GPTQ kernels serve symmetric models only, so such
an export would not be servable as GPTQ; compressed-tensors serves them.
"""

from __future__ import annotations

import torch

from lowbit.errors import FormatError
from lowbit.formats import IntFormat, WeightFormat, pack_bits
from lowbit.foreign.export_common import int_refusal, one_grid, to_int32, unsigned_codes


def refusal(fmt: WeightFormat) -> str | None:
    why = int_refusal(fmt, "GPTQ", (torch.float16,))
    if why or fmt.symmetric:
        return why
    return (f"{fmt.describe()} is asymmetric: vLLM serves GPTQ checkpoints only when symmetric, so it would not be "
            "servable as GPTQ; export as compressed-tensors (vLLM serves asymmetric int through Machete) or "
            "re-quantize with symmetric=True")


def config(layers: dict, ignore: list[str]) -> dict:
    fmt = one_grid(layers, "GPTQ")
    return {"quant_method": "gptq", "bits": fmt.bits, "group_size": fmt.group_size or -1,
            "desc_act": any(layer.fmt.g_idx for layer in layers.values()), "sym": True, "checkpoint_format": "gptq",
            "pack_dtype": "int32", "static_groups": False, "true_sequential": True, "damp_percent": 0.01,
            "modules_to_not_convert": ignore}


def tensors(fmt: IntFormat, canonical: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    why = refusal(fmt)
    if why:
        raise FormatError(why)
    bits, mid = fmt.bits, 1 << (fmt.bits - 1)
    codes = unsigned_codes(fmt, canonical)  # [N, K], every zero-point 2^(b-1)
    n, k = codes.shape
    groups = canonical["scales"].shape[1]
    zeros = torch.full((groups, n), mid - 1, dtype=torch.uint8)  # v1: z − 1
    g_idx = canonical.get("g_idx")
    if g_idx is None:
        g_idx = torch.arange(k, dtype=torch.int32) // (fmt.group_size or k)
    return {"qweight": to_int32(pack_bits(codes, bits)).T.contiguous(), "qzeros": to_int32(pack_bits(zeros, bits)),
            "scales": canonical["scales"].T.contiguous(), "g_idx": g_idx.to(torch.int32)}
