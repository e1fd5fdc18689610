"""QuantEmbedding: an embedding table stored as int8 codes with one scale per row."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.formats import IntFormat
from lowbit.nn.holder import QuantHolder

EMBEDDING_FORMAT = IntFormat(bits=8, group_size=None, symmetric=True)


class QuantEmbedding(QuantHolder):
    """Looks up int8 rows and scales them; keeps ``padding_idx`` and a scaled embedding's ``embed_scale``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype, padding_idx: int | None = None,
                 embed_scale: float | None = None, device: torch.device | str | None = "meta") -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.out_dtype = dtype
        self.embed_scale = embed_scale
        self._init_quant(num_embeddings, embedding_dim, EMBEDDING_FORMAT, device)

    @classmethod
    def shell(cls, emb: nn.Embedding, dtype: torch.dtype) -> QuantEmbedding:
        # transformers keeps the scale as a float too (``scalar_embed_scale``): its buffer is on meta while loading
        scale = getattr(emb, "scalar_embed_scale", None)
        if scale is None:
            scale = getattr(emb, "embed_scale", None)
        if isinstance(scale, torch.Tensor):
            scale = float(scale.item()) if scale.device.type != "meta" else None
        return cls(emb.num_embeddings, emb.embedding_dim, dtype, emb.padding_idx, scale)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.fmt.describe()}"

    def after_move(self, fn, target: torch.device) -> None:
        self.out_dtype = fn(torch.empty(0, dtype=self.out_dtype)).dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = F.embedding(ids, self.qweight).to(torch.float32) * F.embedding(ids, self.scales)
        if self.embed_scale is not None:
            out = out * self.embed_scale
        return out.to(self.out_dtype)
