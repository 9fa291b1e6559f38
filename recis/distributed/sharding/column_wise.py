"""column_wise: the table split into column chunks (widths multiples of 4) on
distinct ranks; every chunk sees all ids and the pooled chunks are concatenated."""

from __future__ import annotations

from recis.distributed.plan import shard_bytes
from recis.distributed.sharding.base import PlacementContext
from recis.distributed.types import Shard, ShardingError
from recis.nn.config import EmbeddingBagConfig

CHUNK_ALIGN = 4


def chunk_widths(dim: int, num_chunks: int, table: str) -> list[int]:
    """``dim`` split into ``num_chunks`` widths, each a multiple of 4 (larger first)."""
    if dim % CHUNK_ALIGN or dim < 2 * CHUNK_ALIGN:
        raise ShardingError(
            f"table {table!r}: column_wise needs embedding_dim a multiple of {CHUNK_ALIGN} and "
            f">= {2 * CHUNK_ALIGN} (at least two chunks), got {dim}"
        )
    units = dim // CHUNK_ALIGN
    num_chunks = max(2, min(num_chunks, units))
    base, extra = divmod(units, num_chunks)
    return [CHUNK_ALIGN * (base + (1 if i < extra else 0)) for i in range(num_chunks)]


def place(cfg: EmbeddingBagConfig, ctx: PlacementContext) -> list[Shard]:
    if ctx.world_size < 2:
        # One rank: a single chunk is the whole table.
        shard = Shard(0, 0, cfg.num_embeddings, 0, cfg.embedding_dim)
        ctx.add(cfg, shard)
        return [shard]
    widths = chunk_widths(cfg.embedding_dim, ctx.world_size, cfg.name)
    shards, col, free = [], 0, list(range(ctx.world_size))
    for w in widths:
        rank = ctx.least_loaded(
            free,
            shard_bytes(cfg.num_embeddings, w, ctx.optimizer),
            float(len(cfg.feature_names) * w),
            cfg.name,
        )
        free.remove(rank)  # one shard of a table per rank
        shard = Shard(rank, 0, cfg.num_embeddings, col, w)
        ctx.add(cfg, shard)
        shards.append(shard)
        col += w
    return shards
