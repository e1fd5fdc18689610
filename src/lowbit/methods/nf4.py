"""Code-book 4-bit methods ``nf4`` and ``fp4``: absmax per block of inputs, optional double quantization.

``nf4`` stores bitsandbytes' layout (QLoRA NormalFloat4, high nibble first, fp32 absmax per block): for a weight
whose K is a multiple of ``block_size`` the bytes equal ``bitsandbytes.functional.quantize_4bit(w, blocksize=B,
quant_type="nf4", compress_statistics=False)``. ``fp4`` is the OCP E2M1 grid {0, 0.5, ..., 4, 6} scaled by
absmax / 6, low nibble first (bitsandbytes' own "fp4" is a different code book). ``double_quant`` stores the
absmax values as 8-bit codes of bitsandbytes' dynamic map with a scale per 256 of them and one offset
(``compress_statistics=True``). The stored tensors are listed in :mod:`lowbit.formats.codebook`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from lowbit.config import QuantConfig, check_choice
from lowbit.formats.codebook import CodebookFormat, codebook_quantize
from lowbit.quantizer import Quantizer
from lowbit.registry import register_method

BLOCK_SIZES = (32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class Nf4Config(QuantConfig):
    """NormalFloat4 code book (QLoRA / bitsandbytes nf4), absmax per block, optional double quantization."""

    method = "nf4"
    version = 1

    block_size: int = 64
    double_quant: bool = False

    def validate(self) -> None:
        check_choice(self, "block_size", BLOCK_SIZES)


@dataclasses.dataclass(frozen=True)
class Fp4Config(QuantConfig):
    """OCP FP4 (E2M1) grid scaled by absmax / 6 per block, optional double quantization."""

    method = "fp4"
    version = 1

    block_size: int = 64
    double_quant: bool = False

    def validate(self) -> None:
        check_choice(self, "block_size", BLOCK_SIZES)


class CodebookQuantizer(Quantizer):
    """Shared by nf4 and fp4: one :class:`CodebookFormat` per layer (block size falls back per layer)."""

    code: ClassVar[str] = ""

    def weight_format(self, name: str, module: nn.Linear) -> CodebookFormat:
        cfg = self.config
        block = self.group_size_for(name, module.in_features, cfg.block_size, "block_size")
        return CodebookFormat(code=self.code, block_size=block, double_quant=cfg.double_quant)

    def quantize(self, name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        return codebook_quantize(weight, self.formats[name])


class Nf4Quantizer(CodebookQuantizer):
    config_cls = Nf4Config
    code = "nf4"


class Fp4Quantizer(CodebookQuantizer):
    config_cls = Fp4Config
    code = "fp4"


register_method(Nf4Config, Nf4Quantizer)
register_method(Fp4Config, Fp4Quantizer)
