"""FP8 (e4m3fn) weights with float32 scales, weight-only or with dynamic per-token fp8 activations (W8A8).

Stored tensors for a weight of shape [N, K] (N outputs, K inputs):

- ``qweight`` [N, K] float8_e4m3fn: ``w / s`` clamped to ±448 (the e4m3fn maximum), then cast (round to nearest even).
- ``scales`` float32: per output channel [N, 1] (``tile=None``), or per ``tile`` x ``tile`` tile
  [ceil(N / B), ceil(K / B)] (DeepSeek-V3 / vLLM ``weight_block_size=[128, 128]``; edge tiles may be partial).
  ``s = amax / 448`` over the row or tile; an all-zero row or tile has ``s = 1`` and zero codes.

Dequantization: ``w = float(qweight) * s`` (each scale broadcast over its row or tile).

``activations="dynamic"`` (W8A8): at run time every activation row (token) is scaled the same way,
``x_s = amax(|x_row|) / 448`` (1 for an all-zero row), cast to e4m3fn, and the layer is
``(dequant(x) @ dequant(W).T + bias)`` computed in float32, then cast to x's dtype. A ``torch._scaled_mm``
kernel with row-wise scales computes the same product.
"""

from __future__ import annotations

import dataclasses

import torch

from lowbit.errors import FormatError
from lowbit.formats.base import WeightFormat, check_scales

E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
ACTIVATIONS = ("none", "dynamic")
TILES = (128,)


@dataclasses.dataclass(frozen=True)
class Fp8Format(WeightFormat, kind="fp8"):
    """What one fp8 weight stores: its scale granularity, and whether activations are quantized at run time."""

    tile: int | None = None  # None: one scale per output channel; else square tiles of this side share one
    activations: str = "none"  # "none": weight-only; "dynamic": per-token fp8 activations (W8A8)

    def __post_init__(self) -> None:
        if self.tile is not None and self.tile not in TILES:
            raise FormatError(f"Fp8Format.tile={self.tile!r}; expected one of {list(TILES)} or None (one scale per "
                              "output channel)")
        if self.activations not in ACTIVATIONS:
            raise FormatError(f"Fp8Format.activations={self.activations!r}; expected one of {list(ACTIVATIONS)}")

    def describe(self) -> str:
        scale = "per-channel" if self.tile is None else f"block {self.tile}x{self.tile}"
        act = "W8A8 dynamic per-token" if self.activations == "dynamic" else "weight-only"
        return f"fp8 e4m3fn {scale} {act}"

    def scale_shape(self, n: int, k: int) -> tuple[int, int]:
        if self.tile is None:
            return (n, 1)
        b = self.tile
        return (-(-n // b), -(-k // b))

    @property
    def row_multiple(self) -> int:
        """Whole bands of tiles: a block of rows never splits a tile."""
        return self.tile or 1

    def encode_rows(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        return quantize_channel(w) if self.tile is None else quantize_block(w, self.tile)

    def expected_tensors(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"qweight": ((n, k), torch.float8_e4m3fn), "scales": (self.scale_shape(n, k), torch.float32)}

    def check(self, tensors: dict[str, torch.Tensor], own: bool = True) -> None:
        """Scales finite and positive. The codes' e4m3fn NaN (0x7f, 0xff), which encoding never writes, is found
        where every float8 tensor is read (the reader's NaN/Inf check), so the codes are not scanned twice."""
        check_scales("scales", tensors["scales"], positive=own)

    def decode(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q = tensors["qweight"]
        return (q.float() * expand_scales(tensors["scales"], q.shape, self.tile)).to(dtype)

    def reference_linear(self, x: torch.Tensor, tensors: dict[str, torch.Tensor],
                         bias: torch.Tensor | None) -> torch.Tensor:
        """Weight-only: dequantize to x's dtype, then F.linear. Dynamic: fp8 rows of x, product in float32."""
        if self.activations == "none":
            return super().reference_linear(x, tensors, bias)
        xq, xs = quantize_rows(x)
        y = (xq.float() * xs) @ self.decode(tensors, torch.float32).T
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)


def expand_scales(scales: torch.Tensor, shape: torch.Size | tuple[int, int], tile: int | None) -> torch.Tensor:
    """Scales [N, 1] or [ceil(N/B), ceil(K/B)] → float32 broadcastable over an [N, K] weight."""
    scales = scales.float()
    if tile is None:
        return scales
    n, k = shape
    return scales.repeat_interleave(tile, 0)[:n].repeat_interleave(tile, 1)[:, :k]


def to_e4m3(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``t / scale`` (float32) clamped to ±448 and cast to float8_e4m3fn."""
    return (t.float() / scale).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def amax_scale(amax: torch.Tensor) -> torch.Tensor:
    """``amax / 448`` in float32; 1 where amax is 0, so all-zero rows/tiles give zero codes and no 0/0."""
    amax = amax.float()
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) dynamic fp8 of x [..., K]: (codes [..., K] e4m3fn, float32 scales [..., 1])."""
    scale = amax_scale(x.abs().amax(-1, keepdim=True))
    return to_e4m3(x, scale), scale


def quantize_channel(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of ``w`` [n, K] → {"qweight" [n, K] e4m3fn, "scales" [n, 1] float32}."""
    scale = amax_scale(w.abs().amax(-1, keepdim=True))
    return {"qweight": to_e4m3(w, scale), "scales": scale}


def quantize_block(w: torch.Tensor, tile: int) -> dict[str, torch.Tensor]:
    """Rows of ``w`` [n, K] (n a multiple of ``tile`` except in the last band) → codes and tile scales
    [ceil(n/B), ceil(K/B)]; partial tiles are measured over their real elements only."""
    n, k = w.shape
    b = tile
    nb, kb = -(-n // b), -(-k // b)
    padded = torch.zeros(nb * b, kb * b, dtype=torch.float32, device=w.device)
    padded[:n, :k] = w.abs()
    amax = padded.reshape(nb, b, kb, b).amax(dim=(1, 3))
    scale = amax_scale(amax)
    return {"qweight": to_e4m3(w, expand_scales(scale, (n, k), b)), "scales": scale}
