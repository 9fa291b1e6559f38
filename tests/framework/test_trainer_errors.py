"""A rank that fails makes the other ranks fail promptly instead of hanging.

Reading errors: the failing rank keeps its process and process group alive until
the other rank has reported its own error through a file, so only the trainer's
per-step flag can stop the other rank. Without it rank 0 would wait in a
collective, rank 1 would give up waiting after 30 s and ``released`` would be False.

Errors inside a step (here: forward, while the other rank waits in DDP's gradient
all-reduce) cannot be announced by a collective; the other rank's collective fails
as soon as the failing rank lets go of its process group (its train() returns with
the error and the process ends, as under torchrun), long before the group's 90 s
timeout, and the trainer reports it as such.

A loss that turns NaN or infinite on any rank stops every rank at the next save,
before it writes, so that a diverged model never pushes the good checkpoints out.
"""

from __future__ import annotations

import math
import os
import time

import pytest
import torch
import torch.distributed as dist

from recis.distributed.comm import all_gather_objects
from recis.framework import trainer_checkpoints
from recis.framework.checkpoint_manager import Saver
from recis.hooks import Hook
from recis.io import CriteoDataset
from recis.nn import filter_out_sparse_param
from recis.optim import SparseSGD
from recis.testing import free_port, run_distributed
from tests.framework.test_trainer import ToyModel, _ddp_model, build_trainer, make_batches
from tests.framework.test_trainer_resume import held_writes
from tests.io.test_criteo import random_rows, write_tsv


def _failing_data(batches, fail_at: int):
    for i, b in enumerate(batches):
        if i == fail_at:
            raise ValueError(f"corrupt record in batch {i}")
        yield b


class FailingModel(ToyModel):
    calls = 0

    def forward(self, batch):
        FailingModel.calls += 1
        if FailingModel.calls == 3:
            raise ValueError("bad feature value in forward")
        return super().forward(batch)


def _outcome(fn, signal_dir: str | None = None, name: str = "") -> dict:
    """Runs ``fn``; with ``signal_dir``, rank 0 signals its error and rank 1 waits for it."""
    rank = dist.get_rank()
    start = time.monotonic()
    try:
        fn()
        error = None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    result = {"error": error, "seconds": time.monotonic() - start}
    if signal_dir is None:
        return result
    flag = os.path.join(signal_dir, f"{name}.rank0_failed")
    if rank == 0:
        open(flag, "w").close()
    else:
        deadline = time.monotonic() + 30
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.05)
        result["released"] = os.path.exists(flag)
    return result


def _dist_failures(tmp: str) -> dict:
    rank = dist.get_rank()
    out = {}

    # 1. Rank 1 cannot read its third batch: the per-step flag carries the error.
    data = make_batches(5, 4, rank)
    if rank == 1:
        data = _failing_data(data, fail_at=2)
    trainer = build_trainer(_ddp_model(), data, os.path.join(tmp, "read"), train_epoch=1)
    out["read"] = _outcome(trainer.train, tmp, "read")
    out["read_group_alive"] = dist.is_initialized()

    # 2. Rank 1's forward raises at step 3 while rank 0 waits in DDP's all-reduce.
    model = FailingModel() if rank == 1 else ToyModel()
    from torch.nn.parallel import DistributedDataParallel

    trainer = build_trainer(
        DistributedDataParallel(model, broadcast_buffers=False),
        make_batches(5, 4, rank),
        os.path.join(tmp, "forward"),
        train_epoch=1,
    )
    out["forward"] = _outcome(trainer.train)
    return out


def test_failing_rank_stops_the_others(tmp_path):
    r0, r1 = run_distributed(_dist_failures, 2, str(tmp_path), timeout=90)
    # Data error: rank 1 raises its own error; rank 0 names rank 1; the group survives.
    assert r1["read"]["error"] == "ValueError: corrupt record in batch 2"
    assert r0["read"]["error"].startswith("RuntimeError: rank 1 failed to read its training data")
    assert r1["read"]["released"]
    assert r0["read_group_alive"] and r1["read_group_alive"]
    # Compute error: rank 1 raises its error; rank 0's pending all-reduce fails, reported
    # as such, well before the 90 s process-group timeout.
    assert r1["forward"]["error"] == "ValueError: bad feature value in forward"
    assert r0["forward"]["error"].startswith("RuntimeError: rank 0: a collective failed at step 2")
    assert r0["forward"]["seconds"] < 30


def _failure_during_a_background_save(tmp: str) -> tuple[dict, list[str]]:
    # Rank 1's forward raises at step 3 while ckpt-2 is still written in the background.
    from torch.nn.parallel import DistributedDataParallel

    rank = dist.get_rank()
    model = FailingModel() if rank == 1 else ToyModel()
    with pytest.MonkeyPatch.context() as patch:
        held_writes(patch, 1.0)  # ckpt-2 is still being written at step 3
        trainer = build_trainer(
            DistributedDataParallel(model, broadcast_buffers=False),
            make_batches(5, 4, rank),
            tmp,
            train_epoch=1,
            save_steps=2,
            async_save=True,
        )
        outcome = _outcome(trainer.train)
    return outcome, _checkpoints(tmp)


def test_a_rank_that_fails_during_a_background_save_lets_it_commit_first(tmp_path):
    # The failing rank finishes its part of the save before it leaves the process
    # group; the other ranks' background saves need it to commit.
    (r0, saved0), (r1, saved1) = run_distributed(
        _failure_during_a_background_save, 2, str(tmp_path), timeout=90
    )
    assert r1["error"] == "ValueError: bad feature value in forward"
    assert r0["error"].startswith("RuntimeError: rank 0: a collective failed at step 2")
    assert r0["seconds"] < 30
    assert saved0 == saved1 == ["ckpt-2"]


def _diverging_batches(rank: int, bad_rank: int, bad_step: int) -> list[dict]:
    """Five batches; on ``bad_rank`` the one of step ``bad_step`` has an infinite input."""
    batches = make_batches(5, 4, rank)
    if rank == bad_rank:
        batches[bad_step - 1]["dense"][0, 0] = math.inf
    return batches


def _checkpoints(out: str) -> list[str]:
    return Saver(ToyModel(), output_dir=out).checkpoints()


def test_a_loss_that_turns_nan_stops_training_before_the_next_save(tmp_path):
    out = str(tmp_path)
    trainer = build_trainer(
        ToyModel(), _diverging_batches(0, 0, bad_step=3), out, train_epoch=1, save_steps=2
    )
    message = (
        r"the training loss of rank 0 was NaN or infinite at step 3; stopping at step 4 "
        rf"without a checkpoint, so that the last good one stays the newest \({out}/ckpt-2\)"
    )
    with pytest.raises(FloatingPointError, match=message):
        trainer.train()
    assert _checkpoints(out) == ["ckpt-2"]
    # The final save of a run checks as well.
    trainer = build_trainer(
        ToyModel(), _diverging_batches(0, 0, bad_step=2), str(tmp_path / "end"), train_steps=3
    )
    with pytest.raises(FloatingPointError, match=r"rank 0 .* at step 2; stopping at step 3"):
        trainer.train()
    assert _checkpoints(str(tmp_path / "end")) == []


def test_a_loss_that_turns_nan_between_saves_stops_within_the_check_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_checkpoints, "NONFINITE_CHECK_STEPS", 2)
    trainer = build_trainer(
        ToyModel(), _diverging_batches(0, 0, bad_step=3), str(tmp_path), train_epoch=1
    )  # saves only at the end (step 5)
    with pytest.raises(FloatingPointError, match=r"at step 3; stopping at step 4 without"):
        trainer.train()
    assert trainer.state.global_step == 4 and _checkpoints(str(tmp_path)) == []


def _dist_nan(tmp: str) -> str:
    rank = dist.get_rank()
    trainer = build_trainer(
        _ddp_model(), _diverging_batches(rank, 1, bad_step=3), tmp, train_epoch=1, save_steps=2
    )
    try:
        trainer.train()
    except FloatingPointError as e:
        return str(e)
    return "trained"


def test_a_nan_loss_on_one_rank_stops_every_rank_before_the_save(tmp_path):
    # Rank 1's loss is infinite at step 3 (and DDP's averaged gradients make every
    # rank's loss NaN from step 4): both ranks stop at step 4, naming rank 1, step 3.
    errors = run_distributed(_dist_nan, 2, str(tmp_path), timeout=90)
    assert errors[0] == errors[1]
    assert errors[0].startswith("the training loss of rank 1 was NaN or infinite at step 3;")
    assert _checkpoints(str(tmp_path)) == ["ckpt-2"]


def _arguments_of_another_node(out: str) -> str:
    rank = dist.get_rank()
    trainer = build_trainer(
        _ddp_model(),
        make_batches(4, 4, rank),
        out,
        train_steps=4,
        save_steps=2 if rank == 0 else 3,  # would save (a collective) at other steps
        log_steps=1 if rank == 0 else None,  # a rank may log on its own
    )
    errors = []
    with pytest.raises(ValueError) as raised:
        trainer.train()
    errors.append(str(raised.value))
    # Dense replicas stepped with other learning rates would drift apart silently.
    lr = 0.1 if rank == 0 else 0.2
    model = _ddp_model()
    trainer = build_trainer(model, make_batches(4, 4, rank), out, lr=lr, train_steps=4)
    trainer.sparse_optimizer = SparseSGD(filter_out_sparse_param(model), lr=lr)
    with pytest.raises(ValueError) as raised:
        trainer.train()
    errors.append(str(raised.value))
    # Ranks sharing out other lists of files would read records twice, or never.
    data = CriteoDataset(os.path.join(out, "data", f"day_{rank}.tsv"), 4, 100)
    trainer = build_trainer(_ddp_model(), data, os.path.join(out, "job"), train_steps=4)
    with pytest.raises(ValueError) as raised:
        trainer.train()
    errors.append(str(raised.value))
    # Each node's own copy of day_0.tsv, rank 1's partial: the same names, other sizes.
    data = CriteoDataset(os.path.join(out, "data", f"node_{rank}", "day_0.tsv"), 4, 100)
    trainer = build_trainer(_ddp_model(), data, os.path.join(out, "job"), train_steps=4)
    with pytest.raises(ValueError) as raised:
        trainer.train()
    errors.append(str(raised.value))
    # Shuffling draws each epoch's order of the files from the seed: per-rank seeds
    # would deal the files out in other orders.
    data = CriteoDataset(os.path.join(out, "data"), 4, 100, shuffle_window=2, seed=7 + rank)
    trainer = build_trainer(_ddp_model(), data, os.path.join(out, "job"), train_steps=4)
    with pytest.raises(ValueError) as raised:
        trainer.train()
    errors.append(str(raised.value))
    # A node left on another torch (or recis) gets the same options and still differs.
    version = torch.__version__
    torch.__version__ = "2.99.0" if rank == 1 else version
    try:
        trainer = build_trainer(_ddp_model(), make_batches(4, 4, rank), out, train_steps=4)
        with pytest.raises(ValueError) as raised:
            trainer.train()
    finally:
        torch.__version__ = version
    errors.append(str(raised.value))
    return errors


def _unreadable_copy_of_the_data(out: str) -> str:
    rank = dist.get_rank()
    data = CriteoDataset(os.path.join(out, f"node_{rank}", "day.parquet"), 4, 100)
    trainer = build_trainer(_ddp_model(), data, os.path.join(out, "job"), train_steps=4)
    with pytest.raises(Exception) as raised:
        trainer.train()
    return f"{type(raised.value).__name__}: {raised.value}"


def test_a_rank_that_cannot_measure_its_data_files_stops_every_rank(tmp_path):
    # Measuring the files for the ranks' comparison reads them: rank 1's copy is broken.
    for node in ("node_0", "node_1"):
        (tmp_path / node).mkdir()
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = random_rows(8, seed=0)
    columns = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
    pq.write_table(table, tmp_path / "node_0" / "day.parquet")
    (tmp_path / "node_1" / "day.parquet").write_bytes(b"PAR1 but not Parquet")
    errors = run_distributed(_unreadable_copy_of_the_data, 2, str(tmp_path), timeout=60)
    assert errors[1].startswith("ValueError: ") and "day.parquet: cannot read it" in errors[1]
    assert errors[0] == (
        "RuntimeError: rank 1 failed to read its train/eval data at step 0; rank 0 stops "
        "too (see rank 1's error)"
    )


def test_ranks_with_different_options_stop_at_once_instead_of_hanging_or_drifting(tmp_path):
    (tmp_path / "data").mkdir()
    for day in (0, 1):
        write_tsv(tmp_path / "data" / f"day_{day}.tsv", random_rows(8, seed=day))
        (tmp_path / "data" / f"node_{day}").mkdir()
    rows = random_rows(8, seed=0)
    write_tsv(tmp_path / "data" / "node_0" / "day_0.tsv", rows)
    write_tsv(tmp_path / "data" / "node_1" / "day_0.tsv", rows[:5])
    errors = run_distributed(_arguments_of_another_node, 2, str(tmp_path), timeout=60)
    assert errors[0] == errors[1]
    steps, lr, files, sizes, seed, torch_version = errors[0]
    assert steps.startswith(
        "ranks differ in TrainingArguments.save_steps: 3 on rank 1 but 2 on rank 0; "
        "every rank must run the same code with the same options (another config, "
        "install or copy of the data on some node?)"
    )
    assert lr.startswith(
        "ranks differ in the dense optimizer's lr: 0.2 on rank 1 but 0.1 on "
        'rank 0 (and ["the sparse optimizer\'s lr"])'
    )
    fingerprint = "ranks differ in the train dataset's files (a fingerprint of names, order, sizes)"
    assert files.startswith(fingerprint) and sizes.startswith(fingerprint)
    assert seed.startswith(
        "ranks differ in the train dataset's seed (it orders the files when shuffling): "
        "8 on rank 1 but 7 on rank 0;"
    )
    assert torch_version.startswith(
        f"ranks differ in the torch version: '2.99.0' on rank 1 but '{torch.__version__}' on "
        "rank 0; "
    )
    assert os.listdir(tmp_path) == ["data"]  # stopped before anything was written


class _SlowRank1(Hook):
    """Rank 1 is busy after step 1 for longer than the process group waits."""

    def after_step(self, metrics, global_step):
        if dist.get_rank() == 1 and global_step == 1:
            time.sleep(6)


def _slow_rank(tmp: str) -> str:
    # The Trainer creates the process group itself, with its ddp_timeout: give up the
    # test's group and meet again on a new port.
    rank, port = dist.get_rank(), all_gather_objects(free_port())[0]
    dist.destroy_process_group()
    os.environ["MASTER_PORT"] = str(port)
    trainer = build_trainer(
        ToyModel(),  # not DDP: the group does not exist before the Trainer
        make_batches(4, 4, rank),
        os.path.join(tmp, "slow"),
        hooks=[_SlowRank1()],
        ddp_timeout=2,
    )
    with pytest.raises(RuntimeError) as raised:
        trainer.train()
    return str(raised.value)


def test_a_collective_that_times_out_says_so_and_names_the_option(tmp_path):
    waited, slow = run_distributed(_slow_rank, 2, str(tmp_path), timeout=90)
    assert waited.startswith(
        "rank 0: a collective timed out at step 1: another rank did not join it within the "
        "process group's timeout (TrainingArguments.ddp_timeout). That rank is slow"
    )
    assert slow.startswith("rank 1: a collective failed at step 1, most likely because")
