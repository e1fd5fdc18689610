"""The former home of round-to-nearest, kept as the name other modules and tests import.

Round to nearest is each format's own encoding now (``fmt.encode(w)``; the integer grid is ``IntFormat.grid``).
"""

from __future__ import annotations

import torch

from lowbit.formats import WeightFormat


def rtn_quantize(w: torch.Tensor, fmt: WeightFormat) -> dict[str, torch.Tensor]:
    """``w`` [N, K] → the stored tensors of ``fmt`` on its round-to-nearest grid: ``fmt.encode(w)``."""
    return fmt.encode(w)
