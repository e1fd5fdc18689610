"""Round-to-nearest integer quantization (``rtn``) and its aliases ``int8``, ``int4``, ``int3`` and ``int2``.

Min/max per output channel or per group of ``group_size`` inputs. Asymmetric grids store an integer
zero-point (the range always includes 0, as GPTQ and AWQ do); symmetric grids use absmax. The rounding is
``IntFormat``'s own encoding (the base Quantizer's ``quantize``).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from lowbit.config import IntGridConfig
from lowbit.formats import IntFormat
from lowbit.quantizer import Quantizer
from lowbit.registry import register_alias, register_method


@dataclasses.dataclass(frozen=True)
class RtnConfig(IntGridConfig):
    """Round-to-nearest integer weights, per channel or per group."""

    method = "rtn"
    version = 1


class RtnQuantizer(Quantizer):
    config_cls = RtnConfig

    def weight_format(self, name: str, module: nn.Linear) -> IntFormat:
        cfg = self.config
        group = self.group_size_for(name, module.in_features, cfg.group_size)
        return IntFormat(bits=cfg.bits, group_size=group, symmetric=cfg.symmetric)


register_method(RtnConfig, RtnQuantizer)
register_alias("int8", "rtn", bits=8, group_size=None, symmetric=True,
               summary="int8 weights, symmetric, one scale per output channel")
register_alias("int4", "rtn", bits=4, group_size=128, symmetric=False,
               summary="int4 weights, asymmetric, groups of 128 inputs")
register_alias("int3", "rtn", bits=3, group_size=128, symmetric=False,
               summary="int3 weights, asymmetric, groups of 128 inputs")
register_alias("int2", "rtn", bits=2, group_size=64, symmetric=False,
               summary="int2 weights, asymmetric, groups of 64 inputs")
