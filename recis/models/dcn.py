"""DCN-v2 (Wang et al., 2021): a cross network stacked with a deep MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recis.io.criteo import NUM_DENSE
from recis.models.common import build_ebc, check_dense, ctr_loss, mlp
from recis.nn import EmbeddingBagConfig


class CrossLayerV2(nn.Module):
    """``x_{l+1} = x0 ⊙ (W x_l + b) + x_l``; ``W = U V`` of rank ``low_rank`` when given."""

    def __init__(self, width: int, low_rank: int | None = None) -> None:
        super().__init__()
        if low_rank is None:
            self.proj: nn.Module = nn.Linear(width, width)
        else:
            self.proj = nn.Sequential(
                nn.Linear(width, low_rank, bias=False), nn.Linear(low_rank, width)
            )

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.proj(x) + x


class DCNv2(nn.Module):
    """DCN-v2, stacked: ``deep(cross^L([dense, embeddings]))`` then one logit.

    Tables may have different dims. Embeddings live in ``self.sparse_arch``.

    Example::

        >>> model = DCNv2(table_sizes=1000, embedding_dim=8, num_cross_layers=3)
        >>> loss = model(batch)
    """

    def __init__(
        self,
        num_dense: int = NUM_DENSE,
        tables: Sequence[EmbeddingBagConfig] | None = None,
        *,
        table_sizes: int | Sequence[int] | None = None,
        embedding_dim: int = 16,
        num_cross_layers: int = 3,
        low_rank: int | None = None,
        deep_mlp: Sequence[int] = (128, 64),
        embedding_device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_dense = num_dense
        self.sparse_arch = build_ebc(tables, table_sizes, embedding_dim, embedding_device)
        width = num_dense + sum(
            c.embedding_dim * len(c.feature_names) for c in self.sparse_arch.embedding_bag_configs()
        )
        self.cross = nn.ModuleList(CrossLayerV2(width, low_rank) for _ in range(num_cross_layers))
        self.deep = mlp(width, [*deep_mlp, 1], last_activation=False)

    def logits(self, batch: dict) -> Tensor:
        dense = check_dense(batch, self.num_dense)
        x0 = torch.cat([dense, self.sparse_arch(batch["sparse"]).values()], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.deep(x).squeeze(1)

    def forward(self, batch: dict) -> Tensor:
        return ctr_loss(self.logits(batch), batch["label"])
