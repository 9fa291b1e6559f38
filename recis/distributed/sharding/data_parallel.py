"""data_parallel: a full replica of the table on every rank, looked up locally with
no forward communication. Backward gathers every rank's (ids, bags, weights, output
gradient) so that each replica records the same combined gradient and the replicas
stay identical after the sparse optimizer step."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from recis import ops
from recis.distributed.comm import all_gather_padded
from recis.distributed.sharding.base import PlacementContext
from recis.distributed.types import Shard
from recis.nn.config import EmbeddingBagConfig
from recis.nn.table import EmbeddingTable, SparseGrad
from recis.sparse._validate import offsets_from_lengths


def place(cfg: EmbeddingBagConfig, ctx: PlacementContext) -> list[Shard]:
    shards = [Shard(r, 0, cfg.num_embeddings, 0, cfg.embedding_dim) for r in range(ctx.world_size)]
    for s in shards:
        ctx.add(cfg, s)
    return shards


class _ReplicaLookup(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        anchor: Tensor,
        table: EmbeddingTable,
        ids: Tensor,
        lengths: Tensor,
        weights: Tensor | None,
        mean: bool,
        sync: ReplicaGradSync,
    ) -> Tensor:
        ctx.table, ctx.mean, ctx.sync = table, mean, sync
        ctx.save_for_backward(ids, lengths, weights)
        return ops.pooled_lookup(
            table.weight, ids, offsets_from_lengths(lengths), weights, ops.MEAN if mean else ops.SUM
        )

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[None, ...]:
        ids, lengths, weights = ctx.saved_tensors
        ids, lengths, weights, grad = ctx.sync.gather(ids, lengths, weights, grad_out)
        ctx.table.record_grad(
            SparseGrad(ids, offsets_from_lengths(lengths), weights, grad, ctx.mean)
        )
        return (None,) * 7


class ReplicaGradSync:
    """Gathers one data-parallel table's backward inputs from every rank.

    ``bags[r]`` and ``num_ids[r]`` (from the step's header exchange) size rank r's
    parts; ``grad_scale`` matches DDP's mean over ranks.
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None,
        world_size: int,
        bags: list[int],
        num_ids: list[int],
        weighted: bool,
        grad_scale: float,
        stats: dict[str, int],
    ) -> None:
        self.group, self.world_size = group, world_size
        self.bags, self.num_ids, self.weighted = bags, num_ids, weighted
        self.grad_scale, self.stats = grad_scale, stats

    def gather(
        self, ids: Tensor, lengths: Tensor, weights: Tensor | None, grad: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        dim = grad.shape[1]
        grad = grad.contiguous() * self.grad_scale
        if self.world_size == 1:
            return ids, lengths, weights, grad
        if self.weighted and weights is None:
            weights = torch.ones(ids.numel(), dtype=torch.float32, device=ids.device)
        ints = torch.cat([lengths.long(), ids.long()])
        parts = [weights.float()] if self.weighted else []
        floats = torch.cat([*parts, grad.float().reshape(-1)])
        int_sizes = [b + n for b, n in zip(self.bags, self.num_ids, strict=True)]
        float_sizes = [
            (n if self.weighted else 0) + b * dim
            for b, n in zip(self.bags, self.num_ids, strict=True)
        ]
        all_ints = all_gather_padded(ints, int_sizes, self.group)
        all_floats = all_gather_padded(floats, float_sizes, self.group)
        self.stats["data_parallel_backward"] = self.stats.get("data_parallel_backward", 0) + (
            (ints.numel() * 8 + floats.numel() * 4) * (self.world_size - 1)
        )
        lens, idss, ws, grads = [], [], [], []
        for r in range(self.world_size):
            b, n = self.bags[r], self.num_ids[r]
            lens.append(all_ints[r][:b])
            idss.append(all_ints[r][b : b + n])
            f = all_floats[r]
            if self.weighted:
                ws.append(f[:n])
                f = f[n:]
            grads.append(f.view(b, dim))
        return (
            torch.cat(idss).to(ids.dtype),
            torch.cat(lens),
            torch.cat(ws) if self.weighted else None,
            torch.cat(grads).to(grad.dtype),
        )


def replica_lookup(
    table: EmbeddingTable,
    ids: Tensor,
    lengths: Tensor,
    weights: Tensor | None,
    mean: bool,
    sync: ReplicaGradSync,
) -> Tensor:
    """Pooled lookup on the local replica; backward records the all-rank gradient."""
    return _ReplicaLookup.apply(table.grad_anchor, table, ids, lengths, weights, mean, sync)
