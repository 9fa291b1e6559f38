"""Round trips on 1, 2 and 3 ranks and N->M resharding for every pair of placements.

One chain of jobs: save on 1 rank (in the test process, no process group), load it
on 2 ranks and save (through fsspec: ``simplecache::file://``), load both on 3 ranks
and save, load that on 1 again: 1->2, 1->3, 2->3 and 3->1. Every saving job first round-trips its
own checkpoint (weights, optimizer state of all kinds, dense, extra, io state). The
25 tables ``<src>__<dst>`` are saved placed by ``src`` and loaded placed by ``dst``.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from recis.framework.checkpoint_manager import Saver
from recis.nn import filter_out_sparse_param
from recis.testing import run_distributed
from tests.framework.ckpt_helpers import (
    COLS,
    PLACEMENTS,
    ROWS,
    FakeSparseOptimizer,
    IOState,
    ShardedTables,
    Wrapped,
    _blocks,
    assert_tree_equal,
    fill,
    global_moment,
    global_row_state,
    global_weight,
    scalar_state,
)

PAIRS = [(s, d) for s in PLACEMENTS for d in PLACEMENTS]
# A column-wise table whose per-row state differs between column shards.
COLAVG = ("colavg", 13, 7, "column_wise", 0)


def specs(side: int) -> list[tuple[str, int, int, str, int]]:
    return [
        (f"{pair[0]}__{pair[1]}", ROWS[i % len(ROWS)], COLS[i % len(COLS)], pair[side], i)
        for i, pair in enumerate(PAIRS)
    ]


def _build(spec, rank, world):
    model = ShardedTables(spec, rank, world)
    opt = FakeSparseOptimizer(filter_out_sparse_param(model))
    adam = torch.optim.Adam(model.dense.parameters(), lr=0.01)
    return model, opt, adam


def _round_trip(out_dir: str, rank: int, world: int) -> None:
    torch.manual_seed(1)  # the same dense values on every rank, as with DDP
    model, opt, adam = _build([*specs(0), COLAVG], rank, world)
    fill(model, opt, row_state_by_cols=("colavg",))
    with torch.no_grad():
        model.dense_buf.uniform_()
    model.dense(torch.ones(2, 4)).sum().backward()
    adam.step()
    io = IOState(pos=7 * rank + 1, seen=torch.arange(rank + 1))
    saver = Saver(Wrapped(model), opt, out_dir, max_keep=3, concurrency=3)
    saver.register_for_checkpointing("adam", adam)
    saver.register_for_checkpointing("reader", io, per_rank=True)
    saver.save("rt")

    model2, opt2, adam2 = _build([*specs(0), COLAVG], rank, world)
    io2 = IOState()
    saver2 = Saver(model2, opt2, out_dir)  # unwrapped: dense names must still match
    saver2.register_for_checkpointing("adam", adam2)
    saver2.register_for_checkpointing("reader", io2, per_rank=True)
    assert saver2.load().endswith("rt")
    assert_tree_equal(model.state_dict(), model2.state_dict())
    for name in model.tables:
        assert_tree_equal(opt.table_state(name), opt2.table_state(name), name)
    assert_tree_equal(adam.state_dict(), adam2.state_dict())
    assert (io2.pos, io2.seen.tolist()) == (7 * rank + 1, list(range(rank + 1)))


def _check_resharded(prev_dir: str, prev_world: int, rank: int, world: int) -> None:
    spec = specs(1) + ([COLAVG] if prev_world == 2 else [])
    model, opt, _ = _build(spec, rank, world)
    saver = Saver(model, opt, prev_dir)
    # IO state of a different world size goes to objects that can map it ...
    io = ReshardableIO()
    saver.register_for_checkpointing("reader", io, per_rank=True)
    saver.load_by_config(prev_dir, {"load": ["sparse", "sparse_opt", "dense", "io_state"]})
    assert io.got == ([7 * r + 1 for r in range(prev_world)], rank, world)
    # ... and is skipped, with a warning, for the others.
    plain = IOState(pos=-1)
    other = Saver(model, opt, prev_dir)
    other.register_for_checkpointing("reader", plain, per_rank=True)
    with pytest.warns(UserWarning, match="io state 'reader' was saved by"):
        other.load_by_config(prev_dir, {"load": ["io_state"]})
    assert plain.pos == -1
    for name, table in model.tables.items():
        rows, cols = table.global_shape
        r0, r1, c0, c1 = model.boxes[name]
        st = opt.table_state(name)
        assert torch.equal(table.weight, global_weight(name, rows, cols)[r0:r1, c0:c1]), name
        assert torch.equal(st["momentum"], global_moment(name, rows, cols)[r0:r1, c0:c1]), name
        assert torch.equal(st["step"], scalar_state(name)), name
        base = global_row_state(name, rows)[r0:r1]
        if name != "colavg":
            assert torch.equal(st["visits"], base), name
            continue
        # Column shards of the saving job kept their own per-row values (base +
        # 1000 * first column); a new shard gets their mean weighted by overlap.
        acc, width = torch.zeros_like(base, dtype=torch.float64), 0
        for a, b in _blocks(cols, prev_world):
            w = max(0, min(b, c1) - max(a, c0))
            acc += (base + 1000.0 * a).double() * w
            width += w
        torch.testing.assert_close(st["visits"], (acc / width).float(), rtol=1e-6, atol=0)


class ReshardableIO(IOState):
    """IO state that knows how to map the saved ranks' positions to a new world."""

    def load_resharded_state_dict(self, states: list[dict], rank: int, world: int) -> None:
        self.got = ([s["pos"] for s in states], rank, world)


def _job(out_dir: str | None, prevs: list[tuple[str, int]]) -> None:
    # World size 1 runs in the test process itself, without a process group.
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if out_dir is not None:
        _round_trip(out_dir, rank, world)
    for prev_dir, prev_world in prevs:
        _check_resharded(prev_dir, prev_world, rank, world)


def test_round_trip_and_resharding_every_placement_pair(tmp_path):
    d = {n: str(tmp_path / f"ws{n}") for n in (1, 2, 3)}
    _job(d[1], [])
    run_distributed(_job, 2, "simplecache::file://" + d[2], [(d[1], 1)])
    run_distributed(_job, 3, d[3], [(d[2], 2), (d[1], 1)])
    _job(None, [(d[3], 3)])
