"""Lookup: pool every local shard's received bags (one autograd node for all of them),
packed by the source rank the rows go back to. Backward records each shard's
SparseGrad, with ids local to the shard, from its rows of the packed gradient."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from recis import ops
from recis.distributed.sharding.input_dist import Received
from recis.distributed.sharding.layout import Layout
from recis.nn.table import EmbeddingTable, SparseGrad


class ShardLookup:
    def __init__(
        self, layout: Layout, rank: int, tables: nn.ModuleDict, device: torch.device
    ) -> None:
        self.tables, self.device = tables, device
        slots = layout.slots_on[rank]
        sharded = [layout.sharded[s.table] for s in slots]
        self.names = [t.config.name for t in sharded]
        self.num_features = [t.num_features for t in sharded]
        self.cols = [s.shard.cols for s in slots]
        # Row-split mean tables arrive as sum pooling with 1/len weights.
        self.mean = [t.mean and not t.splits_rows for t in sharded]
        # Autograd calls backward only for outputs that require grad: this leaf is an
        # input of the lookups so that theirs does.
        self.anchor = torch.zeros((), requires_grad=True)

    def __call__(self, received: Received) -> tuple[Tensor, list[int]]:
        """Returns the flat send buffer and the number of floats for each source rank."""
        # floats[s][j]: floats of local slot j that go back to source s.
        floats = [
            [n * b * c for n, c in zip(self.num_features, self.cols, strict=True)]
            for b in received.batches
        ]
        sizes = [sum(row) for row in floats]
        if not self.names:
            return torch.empty(0, device=self.device), sizes
        shards = [self.tables[name] for name in self.names]
        return _PoolShards.apply(self.anchor, self, shards, received, floats), sizes


class _PoolShards(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        anchor: Tensor,
        lookup: ShardLookup,
        shards: list[EmbeddingTable],
        received: Received,
        floats: list[list[int]],
    ) -> Tensor:
        ctx.lookup, ctx.shards, ctx.received, ctx.floats = lookup, shards, received, floats
        pooled = [
            ops.pooled_lookup(
                shard.weight, ids, offsets, weights, ops.MEAN if mean else ops.SUM
            ).view(-1)
            for shard, ids, offsets, weights, mean in zip(
                shards, received.ids, received.offsets, received.weights, lookup.mean, strict=True
            )
        ]
        if len(floats) == 1:
            return torch.cat(pooled)
        # Each slot's rows are source-major already; interleave them by source.
        per_slot = [p.split([row[j] for row in floats]) for j, p in enumerate(pooled)]
        return torch.cat([part[s] for s in range(len(floats)) for part in per_slot])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, ...]:
        floats, lookup, received = ctx.floats, ctx.lookup, ctx.received
        grad = grad.contiguous()
        k = len(ctx.shards)
        if len(floats) > 1:
            pieces = grad.split([n for row in floats for n in row])
            grad = torch.cat([pieces[k * s + j] for j in range(k) for s in range(len(floats))])
        per_slot = grad.split([sum(row[j] for row in floats) for j in range(k)])
        for j, shard in enumerate(ctx.shards):
            shard.record_grad(
                SparseGrad(
                    received.ids[j],
                    received.offsets[j],
                    received.weights[j],
                    per_slot[j].view(-1, lookup.cols[j]),
                    lookup.mean[j],
                )
            )
        return (None,) * 5
