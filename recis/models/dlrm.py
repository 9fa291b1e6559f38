"""DLRM (Naumov et al., 2019): bottom MLP, embeddings, pairwise dot interaction, top MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recis.io.criteo import NUM_DENSE
from recis.models.common import build_ebc, check_dense, ctr_loss, mlp, shared_embedding_dim
from recis.nn import EmbeddingBagConfig
from recis.ops import dot_interaction


class DLRM(nn.Module):
    """DLRM: ``top_mlp([bottom, dot products of every pair of (bottom, embeddings)])``.

    The bottom MLP maps the dense features to the embedding dimension (its last width
    must equal it, default ``(64, dim)``; every table must share that dimension).
    ``model(batch)`` returns the mean BCE loss and reports ``loss`` and ``auc``. Embeddings live in
    ``self.sparse_arch`` (an :class:`EmbeddingBagCollection`; built on
    ``embedding_device="meta"`` they take no memory until sharded).

    Example::

        >>> model = DLRM(table_sizes=1000, embedding_dim=16, bottom_mlp=(64, 16))
        >>> loss = model(batch)
    """

    def __init__(
        self,
        num_dense: int = NUM_DENSE,
        tables: Sequence[EmbeddingBagConfig] | None = None,
        *,
        table_sizes: int | Sequence[int] | None = None,
        embedding_dim: int = 16,
        bottom_mlp: Sequence[int] | None = None,
        top_mlp: Sequence[int] = (64, 32),
        embedding_device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_dense = num_dense
        self.sparse_arch = build_ebc(tables, table_sizes, embedding_dim, embedding_device)
        dim = shared_embedding_dim(self.sparse_arch, "DLRM")
        if bottom_mlp is None:
            bottom_mlp = (64, dim)
        if not bottom_mlp or bottom_mlp[-1] != dim:
            raise ValueError(f"bottom_mlp must end with the embedding dim {dim}, got {bottom_mlp}")
        self.bottom = mlp(num_dense, bottom_mlp)
        num_f = len(self.sparse_arch.feature_names()) + 1
        self.top = mlp(dim + num_f * (num_f - 1) // 2, [*top_mlp, 1], last_activation=False)

    def logits(self, batch: dict) -> Tensor:
        dense = self.bottom(check_dense(batch, self.num_dense))
        pooled = self.sparse_arch(batch["sparse"]).values()
        return self.top(dot_interaction(dense, pooled)).squeeze(1)

    def forward(self, batch: dict) -> Tensor:
        return ctr_loss(self.logits(batch), batch["label"])
