"""plan_sharding: a balanced ShardingPlan for every embedding table of a model."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch.distributed as dist
from torch import nn

from recis.distributed.plan import OPTIMIZER_STATE, ShardingPlan, shard_bytes
from recis.distributed.sharding import PLACERS
from recis.distributed.sharding.base import PlacementContext
from recis.distributed.types import ROW_WISE, SHARDING_TYPES, TABLE_WISE, ShardingError, TablePlan
from recis.nn.config import EmbeddingBagConfig
from recis.nn.embedding_bag import EmbeddingBagCollection


def model_tables(model: nn.Module) -> list[EmbeddingBagConfig]:
    """Configs of every table of every EmbeddingBagCollection in ``model``, in order."""
    configs: list[EmbeddingBagConfig] = []
    for module in model.modules():
        if isinstance(module, EmbeddingBagCollection):
            configs.extend(module.embedding_bag_configs())
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ShardingError(f"table names must be unique across the model, got {names}")
    return configs


def plan_sharding(
    model: nn.Module,
    world_size: int | None = None,
    constraints: Mapping[str, str] | None = None,
    local_world_size: int | None = None,
    memory_per_rank: int | None = None,
    optimizer: str = "row_wise_adagrad",
) -> ShardingPlan:
    """Shards every table of ``model`` over ``world_size`` ranks.

    ``constraints`` maps a table name to its sharding type (``"table_wise"``,
    ``"row_wise"``, ``"column_wise"``, ``"table_row_wise"``, ``"data_parallel"``);
    other tables are table_wise, or row_wise when a whole table would not fit in
    ``memory_per_rank`` bytes (weights + ``optimizer`` state). Shards go, largest
    table first, to the ranks whose memory and lookup work are lowest so far.
    Nodes (for table_row_wise) are ``local_world_size`` consecutive ranks
    (default: ``$LOCAL_WORLD_SIZE``, else ``world_size``). Raises
    :class:`ShardingError` when a constraint cannot be met.

    Example::

        >>> plan = plan_sharding(model, world_size=4,
        ...                      constraints={"t_user": "row_wise", "t_small": "data_parallel"})
        >>> print(plan)
    """
    if world_size is None:
        world_size = dist.get_world_size() if dist.is_initialized() else 1
    if world_size < 1:
        raise ShardingError(f"world_size must be >= 1, got {world_size}")
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if world_size % max(local_world_size, 1):
            local_world_size = world_size
    if optimizer not in OPTIMIZER_STATE:
        raise ShardingError(f"optimizer must be one of {list(OPTIMIZER_STATE)}, got {optimizer!r}")
    configs = model_tables(model)
    by_name = {c.name: c for c in configs}
    constraints = dict(constraints or {})
    for name, kind in constraints.items():
        if name not in by_name:
            raise ShardingError(
                f"constraint names table {name!r}, which the model does not have "
                f"(tables: {list(by_name)})"
            )
        if kind not in SHARDING_TYPES:
            raise ShardingError(
                f"table {name!r}: unknown sharding type {kind!r} (one of {SHARDING_TYPES})"
            )

    def full_bytes(c: EmbeddingBagConfig) -> int:
        return shard_bytes(c.num_embeddings, c.embedding_dim, optimizer)

    kinds = {}
    for c in configs:
        kind = constraints.get(c.name)
        if kind is None:
            fits = memory_per_rank is None or full_bytes(c) <= memory_per_rank
            kind = TABLE_WISE if fits else ROW_WISE
        kinds[c.name] = kind
    ctx = PlacementContext(
        world_size,
        local_world_size,
        optimizer,
        total_memory=float(sum(full_bytes(c) for c in configs)),
        total_work=float(sum(len(c.feature_names) * c.embedding_dim for c in configs)),
        memory_per_rank=memory_per_rank,
    )
    placed = {}
    # Largest first: the big pieces decide the balance, the small ones fill the gaps.
    for c in sorted(configs, key=lambda c: (-full_bytes(c), c.name)):
        shards = PLACERS[kinds[c.name]](c, ctx)
        placed[c.name] = TablePlan(c.name, kinds[c.name], c.num_embeddings, c.embedding_dim, shards)
    plan = ShardingPlan(
        world_size, local_world_size, {c.name: placed[c.name] for c in configs}, optimizer
    )
    plan.validate()
    return plan
