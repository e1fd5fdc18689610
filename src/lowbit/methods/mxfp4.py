"""``mxfp4``: OCP Microscaling FP4, E2M1 elements with one E8M0 (power-of-two) scale per 32 inputs.

Stores ``qweight`` [N, K/2] uint8 (E2M1 codes, low nibble first) and ``scales`` [N, K/32] uint8 (biased exponents);
see :mod:`lowbit.formats.mx`. The block size is fixed at 32 by the format, so the config has no format field;
a layer whose input size is not a multiple of 32 cannot be stored and must be listed in ``modules_to_not_convert``.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from lowbit.config import QuantConfig
from lowbit.formats.mx import MxFormat
from lowbit.quantizer import Quantizer
from lowbit.registry import register_method


@dataclasses.dataclass(frozen=True)
class Mxfp4Config(QuantConfig):
    """OCP MXFP4: E2M1 weights, one E8M0 power-of-two scale per block of 32 inputs."""

    method = "mxfp4"
    version = 1


class Mxfp4Quantizer(Quantizer):
    config_cls = Mxfp4Config

    def weight_format(self, name: str, module: nn.Linear) -> MxFormat:
        fmt = MxFormat()
        fmt.check_inputs(module.in_features)
        return fmt


register_method(Mxfp4Config, Mxfp4Quantizer)
