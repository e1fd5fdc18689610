"""Quantized modules back to dense ones: each weight decoded once, in the model's dtype (or the one asked for)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.nn.quant_embedding import QuantEmbedding
from lowbit.nn.quant_linear import QuantLinear


class ScaledEmbedding(nn.Embedding):
    """``nn.Embedding`` whose output is multiplied by ``embed_scale`` (Gemma's scaled word embedding)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, embed_scale: float,
                 **kwargs) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx, **kwargs)
        self.embed_scale = embed_scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * self.embed_scale


def dense_linear(layer: QuantLinear, dtype: torch.dtype | None = None) -> nn.Linear:
    """A frozen ``nn.Linear`` holding ``layer``'s dequantized weight (default: the model's dtype) and its bias."""
    weight = layer.dequantize(dtype or layer.model_dtype)
    dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    dense.weight = nn.Parameter(weight, requires_grad=False)
    if layer.bias is not None:
        dense.bias = nn.Parameter(layer.bias.detach().clone().to(weight.dtype), requires_grad=False)
    return dense


def dense_embedding(table: QuantEmbedding, dtype: torch.dtype | None = None) -> nn.Embedding:
    """An ``nn.Embedding`` (scaled where ``table`` is) holding the decoded table."""
    weight = table.fmt.decode(table.canonical_tensors(), dtype or table.out_dtype)
    args = (table.num_embeddings, table.embedding_dim, table.padding_idx)
    dense = (nn.Embedding(*args, device="meta") if table.embed_scale is None
             else ScaledEmbedding(*args, table.embed_scale, device="meta"))
    dense.weight = nn.Parameter(weight, requires_grad=False)
    return dense


def dequantize_modules_(model: nn.Module, dtype: torch.dtype | None = None) -> list[str]:
    """Replace every quantized module of ``model`` by its dense counterpart, in place; a head that shared an
    embedding's table shares the dense table again. Returns the names replaced."""
    dense: dict[str, nn.Module] = {}
    tied: dict[str, str] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantEmbedding):
            dense[name] = dense_embedding(module, dtype)
        elif isinstance(module, QuantLinear):
            if module.tied_to is not None:
                tied[name] = module.tied_to
            dense[name] = dense_linear(module, dtype)
    for name, module in dense.items():
        model.set_submodule(name, module)
    for name, table in tied.items():
        dense[name].weight = dense[table].weight
    return sorted(dense)
