"""The shared round-to-nearest helper: min/max (or absmax) grids, then nearest codes.

Used by the ``rtn`` method, by int8 embeddings of every method, and as the starting point of
methods that refine a grid (HQQ, GPTQ).
"""

from __future__ import annotations

import torch

from lowbit.formats import IntFormat, pack_bits, quantize_to_codes


def rtn_params(w: torch.Tensor, fmt: IntFormat) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min/max scales (and integer zero-points) of ``w`` [N, K] for ``fmt``: ([N, G], [N, G] or None)."""
    n, k = w.shape
    g = w.float().reshape(n, fmt.groups(k), -1)
    if fmt.symmetric:
        return _stored(g.abs().amax(-1) / (fmt.qtype.midpoint - 1), fmt), None
    lo = g.amin(-1).clamp(max=0)
    hi = g.amax(-1).clamp(min=0)
    scales = _stored(((hi - lo) / fmt.qtype.qmax), fmt)
    zeros = (-lo / scales.float()).round().clamp(0, fmt.qtype.qmax).to(torch.uint8)
    return scales, zeros


def _stored(scales: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """Scales in the format's dtype. All-zero groups get scale 1 (codes at zero, no division by zero);
    tiny ones are raised to the dtype's smallest normal number, since fp16 subnormals would round the
    scale by up to 50% and put the group's extremes off the grid."""
    info = torch.finfo(fmt.scale_dtype)
    scales = torch.where(scales > 0, scales.clamp(info.tiny, info.max), torch.ones_like(scales))
    return scales.to(fmt.scale_dtype)


CHUNK_ELEMENTS = 1 << 21  # rows are quantized in blocks of about this many weights


def rtn_quantize(w: torch.Tensor, fmt: IntFormat) -> dict[str, torch.Tensor]:
    """The shared RTN helper: ``w`` [N, K] → stored tensors of ``fmt``.

    Works through blocks of rows so that its fp32 temporaries stay at a few MB whatever the layer's size:
    quantizing on load then needs little more than the packed result and the tensor being read.
    """
    n, k = w.shape
    rows = max(1, CHUNK_ELEMENTS // k)
    parts = []
    for block in w.split(rows):
        scales, zeros = rtn_params(block, fmt)
        part = {"qweight": pack_bits(quantize_to_codes(block, fmt, scales, zeros), fmt.bits), "scales": scales}
        if zeros is not None:
            part["zeros"] = zeros
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
