"""Code-book 4-bit methods ``nf4`` and ``fp4``: absmax per block of inputs, optional double quantization.

``nf4`` stores bitsandbytes' layout (QLoRA NormalFloat4, high nibble first, fp32 absmax per block): for a weight
whose K is a multiple of ``block_size`` the bytes equal ``bitsandbytes.functional.quantize_4bit(w, blocksize=B,
quant_type="nf4", compress_statistics=False)``. ``fp4`` is the OCP E2M1 grid {0, 0.5, ..., 4, 6} scaled by
absmax / 6, low nibble first (bitsandbytes' own "fp4" is a different code book). ``double_quant`` stores the
absmax values as 8-bit codes of bitsandbytes' dynamic map with a scale per 256 of them and one offset
(``compress_statistics=True``). The stored tensors are listed in :mod:`lowbit.formats.codebook`.
"""

from __future__ import annotations

from torch import nn

from lowbit.config import CodebookConfig
from lowbit.formats.codebook import CodebookFormat
from lowbit.quantizer import Quantizer
from lowbit.registry import register_method


class Nf4Config(CodebookConfig):
    """NormalFloat4 code book (QLoRA / bitsandbytes nf4), absmax per block, optional double quantization."""

    method = "nf4"
    version = 1


class Fp4Config(CodebookConfig):
    """OCP FP4 (E2M1) grid scaled by absmax / 6 per block, optional double quantization."""

    method = "fp4"
    version = 1


class CodebookQuantizer(Quantizer):
    """Shared by nf4 and fp4: one :class:`CodebookFormat` per layer, the code book named by the method (block size
    falls back per layer)."""

    config_cls = CodebookConfig

    def weight_format(self, name: str, module: nn.Linear) -> CodebookFormat:
        cfg = self.config
        block = self.group_size_for(name, module.in_features, cfg.block_size, "block_size")
        return CodebookFormat(code=cfg.method, absmax_block=block, double_quant=cfg.double_quant)


register_method(Nf4Config, CodebookQuantizer)
register_method(Fp4Config, CodebookQuantizer)
