"""DistributedModelParallel: sharded embeddings + DDP for the dense remainder."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recis.distributed.comm import all_gather_objects, rank_and_world
from recis.distributed.host_memory import RankHost, check_plan_fits_hosts
from recis.distributed.plan import ShardingPlan
from recis.distributed.planner import plan_sharding
from recis.distributed.sharded_ebc import ShardedEmbeddingBagCollection
from recis.distributed.types import ShardingError
from recis.nn.embedding_bag import EmbeddingBagCollection
from recis.nn.table import EmbeddingTable

_PREFIX = "module."
logger = logging.getLogger(__name__)


def _default_device(group: dist.ProcessGroup | None) -> torch.device:
    if dist.is_initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _not_synced_by_ddp(model: nn.Module) -> list[str]:
    """Names DDP must leave alone: table weights (the sparse optimizer owns them) and
    non-persistent buffers (constants derived at construction, such as an index table,
    identical on every rank: broadcasting them would cost a collective every step)."""
    names = []
    for path, m in model.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(m, EmbeddingTable):
            names.append(f"{prefix}weight")
        names.extend(f"{prefix}{b}" for b in m._non_persistent_buffers_set)
    return names


def _check_plan(plan: ShardingPlan, device: torch.device, group: dist.ProcessGroup | None) -> None:
    """Raises on every rank unless every rank has this plan and its tables fit the
    memory of the hosts that keep them (:func:`check_plan_fits_hosts`).

    Ranks that built their models from other options (a node with another config or
    code version) would exchange lookups that do not fit, and fail later with a
    stranger error, or hang. One all-gather carries what both checks need.
    """
    mine = (plan.to_json(), RankHost.here(tables_in_host_memory=device.type == "cpu"))
    ranks = all_gather_objects(mine, group)
    rank = rank_and_world(group)[0]
    plans = [p for p, _ in ranks]
    differing = [r for r, p in enumerate(plans) if p != plans[0]]
    if differing:
        first = ShardingPlan.from_json(plans[0])
        what = first.difference(ShardingPlan.from_json(plans[differing[0]]))
        raise ShardingError(
            f"the sharding plan of rank(s) {differing} differs from rank 0's (rank "
            f"{differing[0]}: {what}): every rank must build the same model with the same "
            "options (another config or code version on some node?)"
        )
    tight = check_plan_fits_hosts(plan, [host for _, host in ranks])
    if tight and rank == 0:
        logger.warning(tight)


def _replace_collections(model: nn.Module, make: Any) -> nn.Module:
    """Swaps every EmbeddingBagCollection in ``model`` (or ``model`` itself) for ``make(ebc)``."""
    if isinstance(model, EmbeddingBagCollection):
        return make(model)
    for name, child in list(model.named_children()):
        if isinstance(child, EmbeddingBagCollection):
            setattr(model, name, make(child))
        else:
            _replace_collections(child, make)
    return model


class DistributedModelParallel(nn.Module):
    """Shards ``model``'s embedding tables by ``plan`` and data-parallelises the rest.

    Every :class:`EmbeddingBagCollection` becomes a
    :class:`~recis.distributed.sharded_ebc.ShardedEmbeddingBagCollection` with the same
    output; the dense remainder is wrapped in ``DistributedDataParallel`` (when it has
    parameters and the group has more than one rank; table weights, which are buffers,
    are excluded from its buffer broadcast). Tables holding values keep them (each rank
    takes its slices); tables built on ``meta`` are initialised shard by shard.
    Embedding gradients are scaled by ``1 / world_size`` to match DDP's mean, so N
    ranks with batch B train like one rank with batch N·B.

    Example::

        >>> dmp = DistributedModelParallel(model)            # plan_sharding(model)
        >>> sparse_opt = SparseRowWiseAdagrad(filter_out_sparse_param(dmp), lr=0.05)
        >>> dense_opt = torch.optim.Adam(dmp.parameters())
        >>> loss = dmp(batch); loss.backward(); dense_opt.step(); sparse_opt.step()
    """

    def __init__(
        self,
        model: nn.Module,
        plan: ShardingPlan | None = None,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        _, world = rank_and_world(process_group)
        device = torch.device(device) if device is not None else _default_device(process_group)
        if plan is None:
            plan = plan_sharding(model, world_size=world)
        _check_plan(plan, device, process_group)
        self.plan = plan

        def shard(ebc: EmbeddingBagCollection) -> ShardedEmbeddingBagCollection:
            return ShardedEmbeddingBagCollection(ebc, plan, process_group, device, 1.0 / world)

        model = _replace_collections(model, shard)
        model.to(device)
        self._inner = [model]  # the unwrapped model, without registering it twice
        dense = [p for p in model.parameters() if p.requires_grad]
        if dist.is_initialized() and world > 1 and dense:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, _not_synced_by_ddp(model)
            )
            self.module: nn.Module = DistributedDataParallel(
                model,
                device_ids=[device] if device.type == "cuda" else None,
                process_group=process_group,
            )
        else:
            self.module = model

    @property
    def unwrapped(self) -> nn.Module:
        """The sharded model without the DDP wrapper."""
        return self._inner[0]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def sharded_collections(self) -> list[ShardedEmbeddingBagCollection]:
        return [m for m in self.unwrapped.modules() if isinstance(m, ShardedEmbeddingBagCollection)]

    def comm_bytes(self) -> dict[str, int]:
        """Bytes each stage sent to other ranks in the last step, over every collection."""
        total: dict[str, int] = {}
        for m in self.sharded_collections():
            for k, v in m.comm_bytes().items():
                total[k] = total.get(k, 0) + v
        return total

    def state_dict(  # type: ignore[override]
        self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """The unwrapped model's state with one ``"module."`` prefix (whether or not DDP
        wraps it); table entries hold this rank's shards."""
        return self.unwrapped.state_dict(
            destination=destination, prefix=prefix + _PREFIX, keep_vars=keep_vars
        )

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        stripped = {
            (k[len(_PREFIX) :] if k.startswith(_PREFIX) else k): v for k, v in state_dict.items()
        }
        return self.unwrapped.load_state_dict(stripped, strict=strict, assign=assign)
