"""Static layout of a sharded collection: which (table, shard) slots each rank serves,
in the order every rank packs and unpacks them, and where each feature sits in the
output. Everything here is independent of the batch, so it is worked out once."""

from __future__ import annotations

import math
from dataclasses import dataclass

from recis.distributed.plan import ShardingPlan
from recis.distributed.types import DATA_PARALLEL, Shard, ShardingError, TablePlan
from recis.nn.config import EmbeddingBagConfig


@dataclass(frozen=True)
class Slot:
    """Shard ``index`` of sharded table ``table`` (an index into ``Layout.sharded``)."""

    table: int
    index: int
    shard: Shard


@dataclass
class ShardedTable:
    config: EmbeddingBagConfig
    plan: TablePlan
    shards: list[Shard]  # row-split: by row offset (bucket order); else by column offset

    @property
    def num_features(self) -> int:
        return len(self.config.feature_names)

    @property
    def splits_rows(self) -> bool:
        return self.plan.splits_rows

    @property
    def mean(self) -> bool:
        return self.config.pooling == "mean"


class Layout:
    """The slots of every rank and the output's columns, for one plan.

    The output holds every feature in the unsharded collection's order. The sharded
    tables' features, in that order, form the *sharded output* (``sharded_width``
    columns, feature ``f`` at ``sharded_column[f]``); ``output_runs`` rebuilds the
    whole output from it and the data-parallel tables' blocks.
    """

    def __init__(
        self, configs: list[EmbeddingBagConfig], plan: ShardingPlan, world_size: int
    ) -> None:
        if plan.world_size != world_size:
            raise ShardingError(
                f"the plan is for world size {plan.world_size} but the process group has "
                f"{world_size} ranks"
            )
        self.configs = configs
        self.sharded: list[ShardedTable] = []
        self.replicated: list[EmbeddingBagConfig] = []
        for cfg in configs:
            tp = plan.tables.get(cfg.name)
            if tp is None:
                raise ShardingError(f"the plan has no entry for table {cfg.name!r}")
            if (tp.num_embeddings, tp.embedding_dim) != (cfg.num_embeddings, cfg.embedding_dim):
                raise ShardingError(
                    f"table {cfg.name!r} is {cfg.num_embeddings}x{cfg.embedding_dim} but the "
                    f"plan says {tp.num_embeddings}x{tp.embedding_dim}"
                )
            if tp.sharding_type == DATA_PARALLEL:
                self.replicated.append(cfg)
                continue
            key = (lambda s: s.row_offset) if tp.splits_rows else (lambda s: s.col_offset)
            self.sharded.append(ShardedTable(cfg, tp, sorted(tp.shards, key=key)))
        self.slots_on: list[list[Slot]] = [[] for _ in range(world_size)]
        for t, table in enumerate(self.sharded):
            for k, shard in enumerate(table.shards):
                self.slots_on[shard.rank].append(Slot(t, k, shard))
        # Output columns of every feature, in the unsharded collection's order.
        self.features: list[str] = [f for c in configs for f in c.feature_names]
        self.dims: list[int] = [c.embedding_dim for c in configs for _ in c.feature_names]
        self.needs_weights = any(t.splits_rows and t.mean for t in self.sharded)
        self.sharded_column: dict[str, int] = {}
        # Each entry is a column range of the sharded output, or the index of a
        # data-parallel table whose block comes next.
        self.output_runs: list[slice | int] = []
        width, replicated = 0, 0
        for cfg in configs:
            if plan.tables[cfg.name].sharding_type == DATA_PARALLEL:
                self.output_runs.append(replicated)
                replicated += 1
                continue
            start = width
            for f in cfg.feature_names:
                self.sharded_column[f] = width
                width += cfg.embedding_dim
            last = self.output_runs[-1] if self.output_runs else None
            if isinstance(last, slice):
                self.output_runs[-1] = slice(last.start, width)
            else:
                self.output_runs.append(slice(start, width))
        self.sharded_width = width
        # Every shard's width (hence every column offset) is a multiple of this.
        self.column_unit = math.gcd(*(s.cols for t in self.sharded for s in t.shards)) or 1

    def bags(self, slots: list[Slot], batch: int) -> int:
        """Bags (lengths entries) of ``slots`` for a batch of ``batch`` samples."""
        return sum(self.sharded[s.table].num_features * batch for s in slots)
