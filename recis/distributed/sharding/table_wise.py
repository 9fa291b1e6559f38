"""table_wise: the whole table on one rank; ids go there, pooled rows come back."""

from __future__ import annotations

from recis.distributed.plan import shard_bytes
from recis.distributed.sharding.base import PlacementContext
from recis.distributed.types import Shard
from recis.nn.config import EmbeddingBagConfig


def place(cfg: EmbeddingBagConfig, ctx: PlacementContext) -> list[Shard]:
    rows, cols = cfg.num_embeddings, cfg.embedding_dim
    rank = ctx.least_loaded(
        list(range(ctx.world_size)),
        shard_bytes(rows, cols, ctx.optimizer),
        float(len(cfg.feature_names) * cols),
        cfg.name,
    )
    shard = Shard(rank, 0, rows, 0, cols)
    ctx.add(cfg, shard)
    return [shard]
