"""table_row_wise: row_wise within one node (``local_world_size`` consecutive ranks),
the node chosen per table as table_wise would choose a rank. Ids travel to the node's
ranks only; the lookup and output are the row_wise ones."""

from __future__ import annotations

from recis.distributed.plan import shard_bytes
from recis.distributed.sharding.base import PlacementContext
from recis.distributed.sharding.row_wise import row_blocks
from recis.distributed.types import Shard, ShardingError
from recis.nn.config import EmbeddingBagConfig


def place(cfg: EmbeddingBagConfig, ctx: PlacementContext) -> list[Shard]:
    local = ctx.local_world_size
    if local < 1 or ctx.world_size % local:
        raise ShardingError(
            f"table {cfg.name!r}: table_row_wise needs world_size ({ctx.world_size}) to be a "
            f"multiple of local_world_size ({local})"
        )
    nodes = [list(range(n * local, (n + 1) * local)) for n in range(ctx.world_size // local)]

    def node_cost(ranks: list[int]) -> float:
        block = shard_bytes(-(-cfg.num_embeddings // local), cfg.embedding_dim, ctx.optimizer)
        if not all(ctx.fits(r, block) for r in ranks):
            return float("inf")
        return sum(ctx.cost(r) for r in ranks)

    best = min(nodes, key=node_cost)
    if node_cost(best) == float("inf"):
        raise ShardingError(
            f"table {cfg.name!r}: its row blocks fit on no node "
            f"(memory_per_rank={ctx.memory_per_rank} bytes)"
        )
    shards = row_blocks(cfg, best)
    for s in shards:
        ctx.add(cfg, s)
    return shards
