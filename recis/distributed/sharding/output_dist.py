"""Output dist: send pooled rows back to the rank of their samples (asynchronously,
autograd-aware), then assemble each feature's block: column chunks concatenated,
row-block partial sums added."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from recis.distributed.comm import (
    PooledAllToAll,
    pooled_all_to_all_start,
    pooled_all_to_all_wait,
)
from recis.distributed.sharding.layout import Layout
from recis.distributed.sharding.routing import COMBINERS


class OutputDist:
    def __init__(
        self,
        layout: Layout,
        rank: int,
        world_size: int,
        group: dist.ProcessGroup | None,
        grad_scale: float,
    ) -> None:
        self.layout, self.rank, self.world_size = layout, rank, world_size
        self.group, self.grad_scale = group, grad_scale
        self.anchor = torch.zeros((), requires_grad=True)

    def start(
        self, send: Tensor, send_sizes: list[int], batch: int, stats: dict[str, int]
    ) -> OutputAwaitable:
        recv_sizes = [
            sum(
                self.layout.sharded[s.table].num_features * batch * s.shard.cols
                for s in self.layout.slots_on[d]
            )
            for d in range(self.world_size)
        ]
        state = PooledAllToAll(
            send_sizes, recv_sizes, self.group, self.world_size, self.grad_scale, stats, self.rank
        )
        return OutputAwaitable(
            self.layout, batch, recv_sizes, state, pooled_all_to_all_start(send, self.anchor, state)
        )


class OutputAwaitable:
    def __init__(
        self, layout: Layout, batch: int, recv_sizes: list[int], state: PooledAllToAll, recv: Tensor
    ) -> None:
        self.layout, self.batch, self.recv_sizes = layout, batch, recv_sizes
        self.state, self.recv = state, recv

    def wait(self) -> dict[str, Tensor]:
        """Each sharded feature's pooled block ``[B, dim]``."""
        recv = pooled_all_to_all_wait(self.recv, self.state)
        # pieces[table][shard] -> [num_features, B, cols]
        pieces: list[dict[int, Tensor]] = [{} for _ in self.layout.sharded]
        for d, buf in enumerate(recv.split(self.recv_sizes)):
            offset = 0
            for slot in self.layout.slots_on[d]:
                nf = self.layout.sharded[slot.table].num_features
                n = nf * self.batch * slot.shard.cols
                block = buf[offset : offset + n].view(nf, self.batch, slot.shard.cols)
                pieces[slot.table][slot.index] = block
                offset += n
        out: dict[str, Tensor] = {}
        for t, table in enumerate(self.layout.sharded):
            parts = [pieces[t][k] for k in range(len(table.shards))]
            pooled = COMBINERS[table.plan.sharding_type](parts)
            for i, f in enumerate(table.config.feature_names):
                out[f] = pooled[i]
        return out
