"""A rank that saves checkpoints in a loop until it is killed (crash-safety test).

Run as ``python -m tests.framework.crash_worker <output_dir>`` with the torchrun
variables set. Checkpoint ``s<k>`` holds the value ``k`` everywhere (weights, every
optimizer state, dense), so whoever loads it can tell whether it is complete.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from recis.framework.checkpoint_manager import Saver
from recis.nn import filter_out_sparse_param
from tests.framework.ckpt_helpers import FakeSparseOptimizer, ShardedTables

SPECS = [
    ("big", 2003, 64, "row_wise", 0),
    ("dp", 301, 16, "data_parallel", 0),
    ("tw", 499, 32, "table_wise", 1),
    ("cw", 97, 33, "column_wise", 0),
]


def set_value(model: ShardedTables, opt: FakeSparseOptimizer, k: int) -> None:
    with torch.no_grad():
        for name, table in model.tables.items():
            table.weight.fill_(k)
            opt.set_table_state(
                name,
                {
                    "momentum": torch.full_like(table.weight, k),
                    "visits": torch.full((table.weight.shape[0],), float(k)),
                    "step": torch.tensor(float(k)),
                },
            )
        for p in model.dense.parameters():
            p.fill_(k)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = ShardedTables(SPECS, rank, world)
    opt = FakeSparseOptimizer(filter_out_sparse_param(model))
    # Small checksum blocks and 2 writers: many files and blocks per save.
    saver = Saver(model, opt, out_dir, max_keep=2, concurrency=2, block_size=1 << 16)
    done = saver.checkpoints()
    k = int(done[-1][1:]) + 1 if done else 1
    with open(f"{out_dir}.ready{rank}", "w") as f:
        f.write(str(k))
    while True:
        set_value(model, opt, k)
        saver.save(f"s{k}")
        k += 1


if __name__ == "__main__":
    main(sys.argv[1])
    os._exit(0)
