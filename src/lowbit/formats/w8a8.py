"""W8A8 int8: int8 weights with per-output-channel scales, and int8 activations quantized per token at run time.

Stored tensors for a weight of shape [N, K] (N outputs, K inputs), the same as ``IntFormat(8, None, symmetric=True)``:

- ``qweight`` [N, K] int8: ``c = clamp(round(w / s), -127, 127)`` (round half to even), two's complement.
- ``scales`` [N, 1] float32: ``s = amax(|w_row|) / 127``; an all-zero row has ``s = 1`` and zero codes.

Dequantization: ``w = c * s``.

At run time (``reference_linear``) each activation row (token) x of length K is quantized the same way:
``x_s = amax(|x|) / 127`` (1 for an all-zero row), ``x_c = clamp(round(x / x_s), -127, 127)`` in float32. The layer is
``y = float32(acc) * x_s * s + bias`` (left to right, float32), then cast to x's dtype, where
``acc = x_c @ c.T`` is the exact int32 sum that ``torch._int_mm`` and int8 GPU kernels compute. The reference
computes it exactly with float32 matmuls over runs of at most 1,024 inputs (each partial sum stays below 2**24,
where float32 holds every integer), summed in int32.
"""

from __future__ import annotations

import dataclasses

import torch

from lowbit.formats.base import WeightFormat, check_range, check_scales

QMAX = 127
EXACT_RUN = 1024  # 1024 * 127 * 127 < 2**24: a float32 dot product of int8 codes over this many inputs is exact


@dataclasses.dataclass(frozen=True)
class W8A8Format(WeightFormat, kind="w8a8"):
    """int8 weights (symmetric, per output channel) with dynamic per-token int8 activations (SmoothQuant)."""

    def describe(self) -> str:
        return "int8 per-channel sym W8A8 dynamic per-token int8"

    def expected_tensors(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"qweight": ((n, k), torch.int8), "scales": ((n, 1), torch.float32)}

    def encode_rows(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows [n, K] → {"qweight" [n, K] int8, "scales" [n, 1] float32}."""
        scale = absmax_scale(w.abs().amax(-1, keepdim=True))
        return {"qweight": to_int8(w, scale), "scales": scale}

    def check(self, tensors: dict[str, torch.Tensor], own: bool = True) -> None:
        """Scales finite and positive; codes within ±127 (-128 is never written)."""
        check_scales("scales", tensors["scales"], positive=own)
        check_range("qweight", tensors["qweight"], -QMAX, QMAX, "codes")

    def decode(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (tensors["qweight"].float() * tensors["scales"].float()).to(dtype)

    def reference_linear(self, x: torch.Tensor, tensors: dict[str, torch.Tensor],
                         bias: torch.Tensor | None) -> torch.Tensor:
        """int8 rows of x times the int8 weight, accumulated exactly, then scaled in float32."""
        codes, x_scale = quantize_rows(x)
        acc = int8_matmul(codes.reshape(-1, codes.shape[-1]), tensors["qweight"])
        y = acc.float() * x_scale.reshape(-1, 1) * tensors["scales"].float().reshape(1, -1)
        if bias is not None:
            y = y + bias.float()
        return y.reshape(*x.shape[:-1], -1).to(x.dtype)


def absmax_scale(amax: torch.Tensor) -> torch.Tensor:
    """``amax / 127`` in float32; 1 where amax is 0 (all-zero rows give zero codes and no 0/0)."""
    amax = amax.float()
    return torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))


def to_int8(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(round(t / scale), -127, 127)`` computed in float32, as int8."""
    return (t.float() / scale).round_().clamp_(-QMAX, QMAX).to(torch.int8)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) int8 of x [..., K]: (codes [..., K] int8, float32 scales [..., 1])."""
    scale = absmax_scale(x.abs().amax(-1, keepdim=True))
    return to_int8(x, scale), scale


def fake_quantize_rows(x: torch.Tensor) -> torch.Tensor:
    """What the layer sees of x: its per-token int8 codes times their scales, in x's dtype."""
    codes, scale = quantize_rows(x)
    return (codes.float() * scale).to(x.dtype)


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ b.T`` of int8 [M, K] and [N, K] as int32 [M, N] (what ``torch._int_mm`` returns)."""
    acc_dtype = torch.float32 if a.device.type == "cpu" else torch.float64  # GPUs may run float32 matmuls as TF32
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.int32, device=a.device)
    for start in range(0, a.shape[1], EXACT_RUN):
        part = a[:, start:start + EXACT_RUN].to(acc_dtype) @ b[:, start:start + EXACT_RUN].to(acc_dtype).T
        out += part.to(torch.int32)
    return out
