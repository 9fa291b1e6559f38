"""Sharded embeddings: plans, the sharded collection and DistributedModelParallel."""

from recis.distributed.comm import DistributedInputError
from recis.distributed.model_parallel import DistributedModelParallel
from recis.distributed.plan import ShardingPlan
from recis.distributed.planner import plan_sharding
from recis.distributed.process_group import init_distributed, shutdown_distributed
from recis.distributed.sharded_ebc import ShardedEmbeddingBagCollection
from recis.distributed.types import (
    COLUMN_WISE,
    DATA_PARALLEL,
    ROW_WISE,
    SHARDING_TYPES,
    TABLE_ROW_WISE,
    TABLE_WISE,
    Shard,
    ShardingError,
    TablePlan,
)

__all__ = [
    "COLUMN_WISE",
    "DATA_PARALLEL",
    "ROW_WISE",
    "SHARDING_TYPES",
    "TABLE_ROW_WISE",
    "TABLE_WISE",
    "DistributedInputError",
    "DistributedModelParallel",
    "Shard",
    "ShardedEmbeddingBagCollection",
    "ShardingError",
    "ShardingPlan",
    "TablePlan",
    "init_distributed",
    "plan_sharding",
    "shutdown_distributed",
]
