"""Lookup: pool each local shard's received bags with ``recis.nn.table_lookup`` (so
backward records a SparseGrad with local ids in the shard), then pack the pooled rows
by the source rank they go back to."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recis.distributed.sharding.input_dist import Received
from recis.distributed.sharding.layout import Layout
from recis.nn.lookup import table_lookup
from recis.sparse._validate import offsets_from_lengths


class ShardLookup:
    def __init__(
        self, layout: Layout, rank: int, tables: nn.ModuleDict, device: torch.device
    ) -> None:
        self.layout, self.rank, self.tables, self.device = layout, rank, tables, device

    def __call__(self, received: Received) -> tuple[Tensor, list[int]]:
        """Returns the flat send buffer and the number of floats for each source rank."""
        slots = self.layout.slots_on[self.rank]
        per_source: list[list[Tensor]] = [[] for _ in received.batches]
        for i, slot in enumerate(slots):
            table = self.layout.sharded[slot.table]
            shard = self.tables[table.config.name]
            pooled = table_lookup(
                shard,
                received.ids[i],
                offsets_from_lengths(received.lengths[i]),
                received.weights[i],
                # Row-split mean tables arrive as sum pooling with 1/len weights.
                table.mean and not table.splits_rows,
            )
            sizes = [table.num_features * b for b in received.batches]
            for s, part in enumerate(pooled.split(sizes)):
                per_source[s].append(part.reshape(-1))
        sizes = [sum(p.numel() for p in parts) for parts in per_source]
        flat = [p for parts in per_source for p in parts]
        if not flat:
            return torch.empty(0, device=self.device), sizes
        return torch.cat(flat), sizes
