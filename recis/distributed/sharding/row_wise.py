"""row_wise: the table split into row blocks over every rank. Ids are bucketized by
block (made local to the owner); each owner pools its part of every bag and the
partial sums are added at the sample's rank. Mean pooling divides by the FULL bag
length: the input dist turns it into sum pooling with per-id weights 1/len."""

from __future__ import annotations

from recis.distributed.sharding.base import PlacementContext, even_splits
from recis.distributed.types import Shard
from recis.nn.config import EmbeddingBagConfig


def row_blocks(cfg: EmbeddingBagConfig, ranks: list[int]) -> list[Shard]:
    """Even row blocks of ``cfg`` on ``ranks`` in order (no empty blocks)."""
    shards, row = [], 0
    for rank, rows in zip(ranks, even_splits(cfg.num_embeddings, len(ranks)), strict=True):
        if rows:
            shards.append(Shard(rank, row, rows, 0, cfg.embedding_dim))
        row += rows
    return shards


def place(cfg: EmbeddingBagConfig, ctx: PlacementContext) -> list[Shard]:
    shards = row_blocks(cfg, list(range(ctx.world_size)))
    for s in shards:
        ctx.add(cfg, s)
    return shards
