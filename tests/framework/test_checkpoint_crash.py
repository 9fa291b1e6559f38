"""Crash safety: kill -9 ranks at random moments while they save, repeatedly.

Two real rank processes save in a loop (``crash_worker``); at a random moment one
of them gets SIGKILL, then the other. After every crash the last committed
checkpoint must load completely (every value equal to its id's number) and every
listed checkpoint must be complete. The next round resumes in the same directory,
which also exercises the clean-up of what the crash left behind.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from recis.framework.checkpoint_manager import Saver
from recis.nn import filter_out_sparse_param
from recis.testing.distributed import free_port
from tests.framework.ckpt_helpers import FakeSparseOptimizer, ShardedTables
from tests.framework.crash_worker import SPECS

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 4


def _start(out_dir: str, world: int) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world),
            PYTHONPATH=str(ROOT),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.framework.crash_worker", out_dir],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    return procs


def _verify(out_dir: str) -> list[str]:
    """Every listed checkpoint loads (on one rank: resharded) and is complete."""
    model = ShardedTables(SPECS, 0, 1)
    opt = FakeSparseOptimizer(filter_out_sparse_param(model))
    saver = Saver(model, opt, out_dir)
    ids = saver.checkpoints()
    for ckpt_id in ids:
        k = float(ckpt_id[1:])
        saver.load(ckpt_id=ckpt_id)
        for name, table in model.tables.items():
            assert bool((table.weight == k).all()), (ckpt_id, name)
            st = opt.table_state(name)
            assert bool((st["momentum"] == k).all()) and bool((st["visits"] == k).all())
            assert float(st["step"]) == k
        assert bool((model.dense.weight == k).all())
    if ids:
        assert saver.latest_checkpoint() == os.path.join(out_dir, ids[-1])
    # Outside hidden temporaries (removed by the next save), a folder is listed, or
    # it is a complete checkpoint that a crash kept from being listed or pruned.
    for entry in os.listdir(out_dir):
        if not entry.startswith(".") and entry != "checkpoint" and entry not in ids:
            saver.load(ckpt_id=entry)
            assert bool((model.tables["big"].weight == float(entry[1:])).all()), entry
    return ids


def test_kill_minus_9_during_saves_never_breaks_the_last_checkpoint(tmp_path):
    rng = random.Random(1234)
    out_dir = str(tmp_path / "job")
    committed: list[str] = []
    for round_ in range(ROUNDS):
        procs = _start(out_dir, 2)
        try:
            deadline = time.monotonic() + 90
            while not all(os.path.exists(f"{out_dir}.ready{r}") for r in range(2)):
                for p in procs:
                    if p.poll() is not None:
                        raise AssertionError(f"worker died early:\n{p.stderr.read().decode()}")
                assert time.monotonic() < deadline, "workers did not start"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.8))
            victim = rng.randrange(2)
            procs[victim].kill()
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            for p in procs:
                p.kill()
                p.wait()
                p.stderr.close()
        for r in range(2):
            os.remove(f"{out_dir}.ready{r}")
        ids = _verify(out_dir)
        # What was committed before stays committed (max_keep=2 prunes only older ones).
        if committed and ids:
            assert int(ids[-1][1:]) >= int(committed[-1][1:]), (round_, committed, ids)
        committed = ids or committed
    assert committed, "no checkpoint was committed in any round"
    # The next save cleans what the crashes left behind.
    model = ShardedTables(SPECS, 0, 1)
    opt = FakeSparseOptimizer(filter_out_sparse_param(model))
    Saver(model, opt, out_dir, max_keep=2).save("final")
    leftovers = [e for e in os.listdir(out_dir) if e.startswith(".")]
    assert leftovers == [], leftovers
    assert torch.equal(model.tables["big"].weight, torch.zeros(2003, 64))
