"""ShardingPlan: every table's sharding, JSON-serialisable and printable."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from recis.distributed.types import (
    DATA_PARALLEL,
    SHARDING_TYPES,
    ShardingError,
    TablePlan,
)

# Optimizer state per table element (per_element) and per row (per_row), in floats.
OPTIMIZER_STATE = {
    "sgd": (0, 0),
    "adagrad": (1, 0),
    "row_wise_adagrad": (0, 1),
    "adam": (2, 0),
    "adamw": (2, 0),
}


def shard_bytes(
    rows: int, cols: int, optimizer: str = "row_wise_adagrad", itemsize: int = 4
) -> int:
    """Memory of one shard: its weights plus the optimizer's state."""
    per_element, per_row = OPTIMIZER_STATE[optimizer]
    return itemsize * (rows * cols * (1 + per_element) + rows * per_row)


@dataclass
class ShardingPlan:
    """Which rank holds which rows and columns of every table.

    Built by :func:`recis.distributed.plan_sharding` (or by hand, or from JSON) and
    identical on every rank. ``str(plan)`` is a per-table and per-rank summary.

    Example::

        >>> plan = plan_sharding(model, world_size=2, constraints={"t_big": "row_wise"})
        >>> print(plan)
        >>> same = ShardingPlan.from_json(plan.to_json())
    """

    world_size: int
    local_world_size: int
    tables: dict[str, TablePlan] = field(default_factory=dict)
    optimizer: str = "row_wise_adagrad"

    def validate(self) -> None:
        """Raises :class:`ShardingError` when the plan is inconsistent."""
        for t in self.tables.values():
            if t.sharding_type not in SHARDING_TYPES:
                raise ShardingError(
                    f"table {t.name!r}: unknown sharding type {t.sharding_type!r} "
                    f"(one of {SHARDING_TYPES})"
                )
            if not t.shards:
                raise ShardingError(f"table {t.name!r} has no shards")
            ranks = t.ranks()
            if len(set(ranks)) != len(ranks):
                raise ShardingError(f"table {t.name!r}: a rank holds two shards ({ranks})")
            for s in t.shards:
                if not 0 <= s.rank < self.world_size:
                    raise ShardingError(
                        f"table {t.name!r}: shard on rank {s.rank} outside world size "
                        f"{self.world_size}"
                    )
            if t.sharding_type == DATA_PARALLEL:
                if sorted(ranks) != list(range(self.world_size)):
                    raise ShardingError(f"table {t.name!r}: data_parallel needs every rank")
                continue
            cells = sum(s.rows * s.cols for s in t.shards)
            in_bounds = all(
                s.row_offset + s.rows <= t.num_embeddings
                and s.col_offset + s.cols <= t.embedding_dim
                for s in t.shards
            )
            if cells != t.num_embeddings * t.embedding_dim or not in_bounds:
                raise ShardingError(
                    f"table {t.name!r}: shards do not tile the "
                    f"{t.num_embeddings}x{t.embedding_dim} table"
                )

    def rank_memory(self) -> list[int]:
        """Bytes of weights + optimizer state on each rank."""
        mem = [0] * self.world_size
        for t in self.tables.values():
            for s in t.shards:
                mem[s.rank] += shard_bytes(s.rows, s.cols, self.optimizer)
        return mem

    def to_json(self) -> str:
        return json.dumps(
            {
                "world_size": self.world_size,
                "local_world_size": self.local_world_size,
                "optimizer": self.optimizer,
                "tables": [t.to_dict() for t in self.tables.values()],
            },
            indent=1,
        )

    @staticmethod
    def from_json(text: str) -> ShardingPlan:
        d = json.loads(text)
        plan = ShardingPlan(
            int(d["world_size"]),
            int(d["local_world_size"]),
            {t["name"]: TablePlan.from_dict(t) for t in d["tables"]},
            d.get("optimizer", "row_wise_adagrad"),
        )
        plan.validate()
        return plan

    def difference(self, other: ShardingPlan) -> str | None:
        """The first way ``other`` differs from this plan, in words; None when equal."""
        for name in ("world_size", "local_world_size", "optimizer"):
            if getattr(self, name) != getattr(other, name):
                return f"{name} {getattr(other, name)!r} instead of {getattr(self, name)!r}"
        if list(self.tables) != list(other.tables):
            missing = sorted(set(self.tables) - set(other.tables))
            added = sorted(set(other.tables) - set(self.tables))
            if missing or added:
                return f"tables {missing} missing and {added} added"
            return "the same tables in another order"
        for name, mine in self.tables.items():
            theirs = other.tables[name]
            shape, their_shape = (f"{t.num_embeddings}x{t.embedding_dim}" for t in (mine, theirs))
            if their_shape != shape:
                return f"table {name!r} is {their_shape} instead of {shape}"
            if theirs != mine:
                return f"table {name!r} is sharded otherwise: {theirs} instead of {mine}"
        return None

    def __str__(self) -> str:
        lines = [
            f"ShardingPlan(world_size={self.world_size}, local_world_size="
            f"{self.local_world_size}, optimizer={self.optimizer})",
            f"{'table':<20} {'type':<15} {'shape':<14} shards (rank: rows x cols)",
        ]
        for t in self.tables.values():
            shards = ", ".join(
                f"r{s.rank}: [{s.row_offset}:{s.row_offset + s.rows}]x"
                f"[{s.col_offset}:{s.col_offset + s.cols}]"
                for s in t.shards
            )
            if t.sharding_type == DATA_PARALLEL:
                shards = "replica on every rank"
            shape = f"{t.num_embeddings}x{t.embedding_dim}"
            lines.append(f"{t.name:<20} {t.sharding_type:<15} {shape:<14} {shards}")
        lines.append(f"{'rank':<6} {'memory (MiB)':>13}  tables")
        mem = self.rank_memory()
        for r in range(self.world_size):
            names = [t.name for t in self.tables.values() if t.shard_on(r) is not None]
            lines.append(f"{r:<6} {mem[r] / 2**20:>13.3f}  {', '.join(names)}")
        return "\n".join(lines)
