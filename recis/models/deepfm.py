"""DeepFM (Guo et al., 2017): factorisation machine and a deep MLP over shared embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recis.io.criteo import NUM_DENSE
from recis.models.common import build_ebc, check_dense, ctr_loss, mlp, shared_embedding_dim
from recis.nn import EmbeddingBagConfig


class DeepFM(nn.Module):
    """DeepFM: ``logit = first_order + FM(second order) + deep``.

    Fields are the pooled embedding of each sparse feature plus the dense features
    projected to the embedding dimension (one extra field). The FM term sums the
    dot products of every pair of fields; the first-order term is a linear layer over
    all fields (it stands in for per-id scalar weights, which would need a second
    set of tables); the deep part is an MLP over all fields. Embeddings live in
    ``self.sparse_arch``.

    Example::

        >>> model = DeepFM(table_sizes=1000, embedding_dim=8, deep_mlp=(64, 32))
        >>> loss = model(batch)
    """

    def __init__(
        self,
        num_dense: int = NUM_DENSE,
        tables: Sequence[EmbeddingBagConfig] | None = None,
        *,
        table_sizes: int | Sequence[int] | None = None,
        embedding_dim: int = 16,
        deep_mlp: Sequence[int] = (128, 64),
        embedding_device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_dense = num_dense
        self.sparse_arch = build_ebc(tables, table_sizes, embedding_dim, embedding_device)
        self.dim = shared_embedding_dim(self.sparse_arch, "DeepFM")
        width = (len(self.sparse_arch.feature_names()) + 1) * self.dim
        self.dense_proj = nn.Linear(num_dense, self.dim)
        self.first_order = nn.Linear(width, 1)
        self.deep = mlp(width, [*deep_mlp, 1], last_activation=False)

    def logits(self, batch: dict) -> Tensor:
        dense = self.dense_proj(check_dense(batch, self.num_dense))
        pooled = self.sparse_arch(batch["sparse"]).values()
        flat = torch.cat([dense, pooled], dim=1)
        fields = flat.view(flat.shape[0], flat.shape[1] // self.dim, self.dim)  # [B, F+1, D]
        # Σ_{i<j} <v_i, v_j> = ((Σ v)² - Σ v²) / 2, summed over the dimension.
        fm = 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1)).sum(1)
        return (self.first_order(flat) + self.deep(flat)).squeeze(1) + fm

    def forward(self, batch: dict) -> Tensor:
        return ctr_loss(self.logits(batch), batch["label"])
