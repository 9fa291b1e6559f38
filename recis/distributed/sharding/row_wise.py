"""row_wise: the table split into row blocks over every rank. Ids are bucketized by
block (made local to the owner); each owner pools its part of every bag and the
partial sums are added at the sample's rank. Mean pooling divides by the FULL bag
length: the input dist turns it into sum pooling with per-id weights 1/len."""

from __future__ import annotations

import torch
from torch import Tensor

from recis import ops
from recis.distributed.sharding.base import PlacementContext, even_splits
from recis.distributed.sharding.layout import Routed, ShardedTable
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


def route(table: ShardedTable, ids: Tensor, lengths: Tensor, w: Tensor | None) -> list[Routed]:
    """Input dist: ids bucketized by row block, made local to the block's owner."""
    bounds = [s.row_offset for s in table.shards] + [table.config.num_embeddings]
    b = ops.bucketize(ids, lengths, w, torch.tensor(bounds, dtype=torch.int64, device=ids.device))
    k = len(table.shards)
    lens = b.lengths.view(k, -1)
    counts = lens.sum(1).tolist()
    ids_parts = b.ids.split(counts)
    w_parts = b.weights.split(counts) if b.weights is not None else [None] * k
    return [Routed(lens[i], ids_parts[i], w_parts[i]) for i in range(k)]
