"""Exact resume: 2K steps straight == K steps + save + fresh processes + restore + K steps.

Two ranks train a small model: row-wise and table-wise embedding shards updated by
SGD with momentum from their SparseGrads (per-element, per-row and scalar optimizer
state), a dense head under torch Adam + an LR scheduler with gradients averaged over
ranks, and a per-rank data position registered as io state. Bit-for-bit comparison.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from recis.framework.checkpoint_manager import CheckpointManager, Saver
from recis.nn import filter_out_sparse_param, table_lookup
from recis.testing import run_distributed
from tests.framework.ckpt_helpers import (
    FakeSparseOptimizer,
    IOState,
    ShardedTables,
    assert_tree_equal,
    fill,
)

K = 4
B = 4
SPECS = [("u", 11, 4, "row_wise", 0), ("x", 7, 3, "table_wise", 0), ("y", 9, 3, "table_wise", 1)]


class Tiny(nn.Module):
    def __init__(self, rank: int, world: int):
        super().__init__()
        self.sparse = ShardedTables(SPECS, rank, world)
        fill(self.sparse, None)
        self.head = nn.Linear(4 + 3 + 3, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        pooled = [table_lookup(t, *batch[name]) for name, t in self.sparse.tables.items()]
        out = self.head(torch.cat([*pooled, batch["dense"]], 1)).squeeze(1)
        return ((out - batch["label"]) ** 2).mean()


def _batch(model: Tiny, rank: int, pos: int) -> dict:
    g = torch.Generator().manual_seed(1000 * rank + pos)
    batch = {"dense": torch.randn(B, 3, generator=g), "label": torch.rand(B, generator=g)}
    for name, t in model.sparse.tables.items():
        lengths = torch.randint(0, 4, (B,), generator=g)
        ids = torch.randint(0, t.weight.shape[0], (int(lengths.sum()),), generator=g)
        batch[name] = (ids, torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]))
    return batch


class Job:
    """Everything one rank trains, with a CheckpointManager over it."""

    def __init__(self, out_dir: str):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(0)
        self.model = Tiny(self.rank, self.world)
        self.sparse_opt = FakeSparseOptimizer(filter_out_sparse_param(self.model))
        self.adam = torch.optim.Adam(self.model.head.parameters(), lr=0.05)
        self.sched = torch.optim.lr_scheduler.StepLR(self.adam, step_size=3, gamma=0.5)
        self.io = IOState()
        saver = Saver(self.model, self.sparse_opt, out_dir, max_keep=2, concurrency=2)
        saver.register_for_checkpointing("adam", self.adam)
        saver.register_for_checkpointing("sched", self.sched)
        saver.register_for_checkpointing("reader", self.io, per_rank=True)
        self.manager = CheckpointManager(saver, save_interval=K)

    def train(self, steps: int) -> None:
        for _ in range(steps):
            loss = self.model(_batch(self.model, self.rank, self.io.pos))
            loss.backward()
            for p in self.model.head.parameters():
                dist.all_reduce(p.grad)
                p.grad /= self.world
            self.adam.step()
            self.sched.step()
            self.adam.zero_grad()
            self.sparse_opt.step()
            self.io.pos += 1
            self.io.seen = torch.cat([self.io.seen, torch.tensor([self.io.pos])])
            self.manager.step()

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "sparse_opt": {n: self.sparse_opt.table_state(n) for n in self.sparse_opt.state},
            "adam": self.adam.state_dict(),
            "sched": self.sched.state_dict(),
            "io": self.io.state_dict(),
            "step": self.manager.global_step,
        }


def _first_half(out_dir: str) -> None:
    job = Job(out_dir)
    assert job.manager.restore() == 0
    job.train(K)  # saves at step K
    assert job.manager.saver.checkpoints() == [f"ckpt-{K}"]


def _second_half(out_dir: str, straight_dir: str) -> None:
    job = Job(out_dir)
    before = job.model.head.weight.clone()
    assert job.manager.restore() == K
    assert not torch.equal(before, job.model.head.weight)
    job.train(K)
    # The same 2K steps without any checkpoint, in this (fresh) process.
    straight = Job(straight_dir)
    straight.manager.save_interval = 0
    straight.train(2 * K)
    assert_tree_equal(straight.state(), job.state())


def test_exact_resume_in_fresh_processes(tmp_path):
    out, straight = str(tmp_path / "job"), str(tmp_path / "straight")
    run_distributed(_first_half, 2, out)
    run_distributed(_second_half, 2, out, straight)
