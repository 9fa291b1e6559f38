"""What every sharding type shares: the placement context the planner hands it."""

from __future__ import annotations

from dataclasses import dataclass, field

from recis.distributed.plan import shard_bytes
from recis.distributed.types import Shard, ShardingError
from recis.nn.config import EmbeddingBagConfig


def even_splits(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` sizes differing by at most one (larger first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


@dataclass
class PlacementContext:
    """Per-rank load so far; each sharding type places shards on the least loaded ranks.

    Load combines memory (weights + optimizer state) and lookup work (ids looked up x
    dim, which is also the pooled output each rank sends), each normalised by the
    model's total so neither dominates.
    """

    world_size: int
    local_world_size: int
    optimizer: str
    total_memory: float
    total_work: float
    memory_per_rank: int | None = None
    memory: list[float] = field(default_factory=list)
    work: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.memory = [0.0] * self.world_size
        self.work = [0.0] * self.world_size

    def cost(self, rank: int, add_memory: float = 0.0, add_work: float = 0.0) -> float:
        return (self.memory[rank] + add_memory) / max(self.total_memory, 1.0) + (
            self.work[rank] + add_work
        ) / max(self.total_work, 1.0)

    def fits(self, rank: int, add_memory: float) -> bool:
        return (
            self.memory_per_rank is None or self.memory[rank] + add_memory <= self.memory_per_rank
        )

    def least_loaded(
        self, candidates: list[int], add_memory: float, add_work: float, table: str
    ) -> int:
        """The rank among ``candidates`` with the lowest load after adding this shard."""
        ok = [r for r in candidates if self.fits(r, add_memory)]
        if not ok:
            raise ShardingError(
                f"table {table!r}: a shard of {add_memory / 2**20:.2f} MiB fits on none of "
                f"ranks {candidates} (memory_per_rank={self.memory_per_rank} bytes, used "
                f"{[int(self.memory[r]) for r in candidates]})"
            )
        return min(ok, key=lambda r: (self.cost(r, add_memory, add_work), r))

    def add(self, cfg: EmbeddingBagConfig, shard: Shard) -> None:
        mem = shard_bytes(shard.rows, shard.cols, self.optimizer)
        if not self.fits(shard.rank, mem):
            raise ShardingError(
                f"table {cfg.name!r}: its shard on rank {shard.rank} "
                f"({mem / 2**20:.2f} MiB) exceeds memory_per_rank={self.memory_per_rank} bytes"
            )
        self.memory[shard.rank] += mem
        self.work[shard.rank] += shard_work(cfg, shard)


def shard_work(cfg: EmbeddingBagConfig, shard: Shard) -> float:
    """Relative lookup work of a shard: its share of the ids times its width."""
    return len(cfg.feature_names) * shard.cols * shard.rows / cfg.num_embeddings
