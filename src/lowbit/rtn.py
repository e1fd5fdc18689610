"""The shared round-to-nearest helper: min/max (or absmax) grids, then nearest codes.

Used by the ``rtn`` method, by int8 embeddings of every method, and as the starting point of
methods that refine a grid (HQQ, GPTQ).
"""

from __future__ import annotations

import torch

from lowbit.formats import IntSpec, pack_bits, quantize_to_codes


def rtn_params(w: torch.Tensor, spec: IntSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min/max scales (and integer zero-points) of ``w`` [N, K] for ``spec``: ([N, G], [N, G] or None)."""
    n, k = w.shape
    g = w.float().reshape(n, spec.groups(k), -1)
    if spec.symmetric:
        return _stored(g.abs().amax(-1) / (spec.qtype.midpoint - 1), spec), None
    lo = g.amin(-1).clamp(max=0)
    hi = g.amax(-1).clamp(min=0)
    scales = _stored(((hi - lo) / spec.qtype.qmax), spec)
    zeros = (-lo / scales.float()).round().clamp(0, spec.qtype.qmax).to(torch.uint8)
    return scales, zeros


def _stored(scales: torch.Tensor, spec: IntSpec) -> torch.Tensor:
    """Scales in the format's dtype. All-zero groups get scale 1 (codes at zero, no division by zero);
    tiny ones are raised to the dtype's smallest normal number, since fp16 subnormals would round the
    scale by up to 50% and put the group's extremes off the grid."""
    info = torch.finfo(spec.scale_dtype)
    scales = torch.where(scales > 0, scales.clamp(info.tiny, info.max), torch.ones_like(scales))
    return scales.to(spec.scale_dtype)


CHUNK_ELEMENTS = 1 << 21  # rows are quantized in blocks of about this many weights


def rtn_quantize(w: torch.Tensor, spec: IntSpec) -> dict[str, torch.Tensor]:
    """The shared RTN helper: ``w`` [N, K] → stored tensors of ``spec``.

    Works through blocks of rows so that its fp32 temporaries stay at a few MB whatever the layer's size:
    quantizing on load then needs little more than the packed result and the tensor being read.
    """
    n, k = w.shape
    rows = max(1, CHUNK_ELEMENTS // k)
    parts = []
    for block in w.split(rows):
        scales, zeros = rtn_params(block, spec)
        part = {"qweight": pack_bits(quantize_to_codes(block, spec, scales, zeros), spec.bits), "scales": scales}
        if zeros is not None:
            part["zeros"] = zeros
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
