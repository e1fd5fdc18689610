"""Modules that hold quantized weights."""

from lowbit.nn.quant_embedding import QuantEmbedding
from lowbit.nn.quant_linear import QuantLinear
from lowbit.nn.fuse import FusedGroup, fuse_projections  # noqa: I001  (fuse needs QuantLinear first)

__all__ = ["FusedGroup", "QuantEmbedding", "QuantLinear", "fuse_projections"]
