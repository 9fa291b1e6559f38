"""Sharding types and the placement of one table's shards."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TABLE_WISE = "table_wise"
ROW_WISE = "row_wise"
COLUMN_WISE = "column_wise"
TABLE_ROW_WISE = "table_row_wise"
DATA_PARALLEL = "data_parallel"
SHARDING_TYPES = (TABLE_WISE, ROW_WISE, COLUMN_WISE, TABLE_ROW_WISE, DATA_PARALLEL)
# Types whose ids are routed by row block and whose pooled outputs are partial sums.
ROW_SPLIT_TYPES = (ROW_WISE, TABLE_ROW_WISE)


class ShardingError(ValueError):
    """A plan that cannot be made or does not fit the model / world."""


@dataclass(frozen=True)
class Shard:
    """Rows ``[row_offset, row_offset + rows)`` x cols ``[col_offset, col_offset + cols)``
    of a table, held by ``rank``."""

    rank: int
    row_offset: int
    rows: int
    col_offset: int
    cols: int


@dataclass
class TablePlan:
    """How one table is sharded: its type and where each shard lives."""

    name: str
    sharding_type: str
    num_embeddings: int
    embedding_dim: int
    shards: list[Shard] = field(default_factory=list)

    @property
    def splits_rows(self) -> bool:
        return self.sharding_type in ROW_SPLIT_TYPES

    def ranks(self) -> list[int]:
        return [s.rank for s in self.shards]

    def shard_on(self, rank: int) -> Shard | None:
        for s in self.shards:
            if s.rank == rank:
                return s
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TablePlan:
        return TablePlan(
            d["name"],
            d["sharding_type"],
            int(d["num_embeddings"]),
            int(d["embedding_dim"]),
            [Shard(**s) for s in d["shards"]],
        )
