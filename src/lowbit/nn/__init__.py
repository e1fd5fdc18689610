"""Modules that hold quantized weights."""

from lowbit.nn.quant_embedding import QuantEmbedding
from lowbit.nn.quant_linear import QuantLinear

__all__ = ["QuantEmbedding", "QuantLinear"]
