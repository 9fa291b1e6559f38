"""Lookup: pool every local shard's received bags (one autograd node for all of them),
packed by the source rank the rows go back to. Backward records, for each shard, how to
make its SparseGrad (ids local to the shard) from its rows of the packed gradient; the
gradient is unpacked when the optimizer first asks, after the GradArrival's wait for the
gradients' all-to-all."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from recis import ops
from recis.distributed.comm import GradArrival
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

    def __call__(self, received: Received, arrival: GradArrival) -> tuple[Tensor, list[int]]:
        """Returns the flat send buffer and the number of floats for each source rank.
        The gradient of the buffer is read only after ``arrival.wait()``."""
        # floats[s][j]: floats of local slot j that go back to source s.
        floats = [
            [n * b * c for n, c in zip(self.num_features, self.cols, strict=True)]
            for b in received.batches
        ]
        sizes = [sum(row) for row in floats]
        if not self.names:
            return torch.empty(0, device=self.device), sizes
        shards = [self.tables[name] for name in self.names]
        return _PoolShards.apply(self.anchor, self, shards, received, floats, arrival), sizes


class _PoolShards(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        anchor: Tensor,
        lookup: ShardLookup,
        shards: list[EmbeddingTable],
        received: Received,
        floats: list[list[int]],
        arrival: GradArrival,
    ) -> Tensor:
        ctx.lookup, ctx.shards, ctx.received, ctx.floats = lookup, shards, received, floats
        ctx.arrival = arrival
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
        shard_grads = _ShardGrads(ctx, grad)
        for j, shard in enumerate(ctx.shards):
            shard.record_grad(partial(shard_grads.of_slot, j))
        return (None,) * 6


class _ShardGrads:
    """Each local shard's SparseGrad from the packed gradient, unpacked on first use,
    after the arrival's wait."""

    def __init__(self, ctx: Any, grad: Tensor) -> None:
        self.lookup, self.received, self.floats = ctx.lookup, ctx.received, ctx.floats
        self.num_shards, self.arrival, self.grad = len(ctx.shards), ctx.arrival, grad
        self.per_slot: list[Tensor] | None = None

    def of_slot(self, j: int) -> SparseGrad:
        if self.per_slot is None:
            self.arrival.wait()
            floats, k = self.floats, self.num_shards
            grad = self.grad.contiguous()
            if len(floats) > 1:
                pieces = grad.split([n for row in floats for n in row])
                grad = torch.cat([pieces[k * s + i] for i in range(k) for s in range(len(floats))])
            self.per_slot = list(grad.split([sum(row[i] for row in floats) for i in range(k)]))
            self.grad = None
        received = self.received
        return SparseGrad(
            received.ids[j],
            received.offsets[j],
            received.weights[j],
            self.per_slot[j].view(-1, self.lookup.cols[j]),
            self.lookup.mean[j],
        )
