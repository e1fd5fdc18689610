"""The one question every kernel is asked: a frozen, typed description of a layer, built once per layer.

``kernel_request`` reads the layer's format (``fmt``) into fields a kernel can test directly (element type or
code book, group size, zero kind, g_idx, scale tiles, activation quantization) and adds the layer's shape,
device and compute dtype; ``can_implement``, ``prepare`` and ``run`` all receive it.
"""

from __future__ import annotations

import dataclasses
import enum

import torch

from lowbit.formats import CodebookFormat, Fp8Format, IntFormat, MxFormat, W8A8Format, WeightFormat
from lowbit.qtypes import QType, ZeroKind


class Activations(str, enum.Enum):
    """What happens to a layer's activations before the product."""

    NONE = "none"  # used as they are (in the compute dtype)
    FP8_ROWS = "fp8_rows"  # quantized to e4m3 per row at run time (W8A8 fp8)
    INT8_ROWS = "int8_rows"  # quantized to int8 per row at run time (W8A8 int8)


@dataclasses.dataclass(frozen=True)
class KernelRequest:
    """One quantized layer as the kernels see it."""

    fmt: WeightFormat  # the stored format: prepare unpacks its canonical tensors, the reference op runs it
    kind: str  # the format's registered kind: "int", "codebook", "mx", "fp8", "w8a8", ...
    bits: int  # bits of one stored weight code
    n: int  # output features
    k: int  # input features
    device: torch.device
    compute_dtype: torch.dtype  # the activations' dtype inside the layer
    qtype: QType | None = None  # integer grids: the code type
    codebook: str | None = None  # code book formats: the code book's name ("nf4", "fp4")
    group_size: int | None = None  # consecutive inputs that share one scale (a code book's block); None: per row
    scale_dtype: torch.dtype | None = None  # integer grids: the dtype the scales are stored in
    zero: ZeroKind = ZeroKind.NONE
    g_idx: bool = False  # a stored g_idx assigns inputs to groups (not runs of consecutive inputs)
    double_quant: bool = False  # the block scales are themselves 8-bit codes
    scale_tile: int | None = None  # scales per square tile of this many rows and inputs (block-scaled fp8)
    activations: Activations = Activations.NONE

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.k)

    @property
    def symmetric(self) -> bool:
        return self.zero is ZeroKind.NONE

    def describe(self) -> str:
        return f"{self.fmt.describe()} {[self.n, self.k]} on {self.device}"


def kernel_request(fmt: WeightFormat, shape: tuple[int, int], device: torch.device | str,
                   compute_dtype: torch.dtype) -> KernelRequest:
    """The request for an [n, k] weight stored as ``fmt`` on ``device``, computed in ``compute_dtype``."""
    n, k = shape
    return KernelRequest(fmt=fmt, kind=fmt.kind, n=n, k=k, device=torch.device(device), compute_dtype=compute_dtype,
                         **_format_fields(fmt))


def _format_fields(fmt: WeightFormat) -> dict:
    """The kernel-relevant fields of each format class; a format not listed has only its kind and tensors."""
    if isinstance(fmt, IntFormat):
        return dict(bits=fmt.bits, qtype=fmt.qtype, group_size=fmt.group_size, scale_dtype=fmt.scale_dtype,
                    zero=fmt.zero_kind, g_idx=fmt.g_idx)
    if isinstance(fmt, CodebookFormat):
        return dict(bits=4, codebook=str(fmt.code), group_size=fmt.absmax_block, double_quant=fmt.double_quant)
    if isinstance(fmt, MxFormat):
        return dict(bits=4, codebook="fp4", group_size=fmt.exponent_block)
    if isinstance(fmt, Fp8Format):
        activations = Activations.FP8_ROWS if fmt.activations == "dynamic" else Activations.NONE
        return dict(bits=8, scale_tile=fmt.tile, activations=activations)
    if isinstance(fmt, W8A8Format):
        return dict(bits=8, activations=Activations.INT8_ROWS)
    return dict(bits=0)
