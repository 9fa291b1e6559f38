"""Trainer + checkpointing: an interrupted job resumed from output_dir ends exactly
like an uninterrupted one; model_bank warm-starts a new job."""

from __future__ import annotations

import threading

import pytest
import torch

from recis.framework.checkpoint.disk_space import rank_checkpoint_bytes
from recis.framework.checkpoint_manager import CheckpointError
from recis.hooks import Hook
from recis.nn import filter_out_sparse_param
from recis.optim import SparseAdagrad
from tests.framework.test_trainer import (
    Recorder,
    ToyModel,
    build_trainer,
    make_batches,
    weights,
)


class ResumableBatches:
    """In-memory batches whose read position is checkpointed (per rank)."""

    def __init__(self, batches: list) -> None:
        self.batches, self.pos = batches, 0

    def __iter__(self):
        while self.pos < len(self.batches):
            self.pos += 1
            yield self.batches[self.pos - 1]
        self.pos = 0

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = int(state["pos"])


def assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a), [n for n in a if not torch.equal(a[n], b[n])]


def held_writes(monkeypatch: pytest.MonkeyPatch, seconds: float) -> threading.Event:
    """Makes every rank's checkpoint writing wait until the event returned is set,
    at most ``seconds``: a background save is still being written until then."""
    from recis.framework import checkpoint_manager

    release, write_rank = threading.Event(), checkpoint_manager.write_rank

    def held(*args, **kwargs):
        release.wait(seconds)
        return write_rank(*args, **kwargs)

    monkeypatch.setattr(checkpoint_manager, "write_rank", held)
    return release


class ReleaseAfterStep(Hook):
    """Sets ``release`` 0.2 s after step ``step`` (on a timer: the step may then wait
    for what it releases)."""

    def __init__(self, step: int, release: threading.Event) -> None:
        self.step, self.release = step, release

    def after_step(self, metrics, global_step):
        if global_step == self.step:
            threading.Timer(0.2, self.release.set).start()


def _job(out_dir: str, train_steps: int, hooks=None, data=None, **args):
    """A fresh 'process': same initial model, momentum SGD with a step LR schedule."""
    torch.manual_seed(5)
    model = ToyModel()
    trainer = build_trainer(
        model,
        ResumableBatches(make_batches(8, 4, 0)) if data is None else data,
        out_dir,
        hooks=hooks,
        train_steps=train_steps,
        save_steps=2,
        **args,
    )
    dense = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer.dense_optimizer = dense
    trainer.dense_lr_scheduler = torch.optim.lr_scheduler.StepLR(dense, step_size=3, gamma=0.5)
    return trainer, model


def test_resume_matches_uninterrupted_and_model_bank_warm_starts(tmp_path, caplog):
    straight, model_a = _job(str(tmp_path / "a"), train_steps=6)
    straight.train()

    first, _ = _job(str(tmp_path / "b"), train_steps=4)
    assert first.train().global_step == 4
    rec = Recorder()
    second, model_b = _job(str(tmp_path / "b"), train_steps=6, hooks=[rec])
    second.train()
    assert rec.calls[2] == ("before_step", 4)  # resumed at step 4, not 0
    assert second.state.global_step == 6
    assert second.train_dataset.pos == 6  # read position restored, then 2 more batches
    assert_equal(weights(model_a), weights(model_b))

    bank = [{"path": str(tmp_path / "b"), "load": ["dense", "sparse"]}]
    warm, model_c = _job(str(tmp_path / "c"), train_steps=1, model_bank=bank)
    with caplog.at_level("INFO", logger="recis.framework.trainer"):
        assert warm.restore() == 0
    assert_equal(weights(model_b), weights(model_c))
    assert f"warm-started from model bank entry {tmp_path / 'b'}\n" in caplog.text

    # With its "extra" state, a bank entry brings its job's step: the job goes on from it.
    bank = [{"path": str(tmp_path / "b"), "exclude": ["sparse_opt"]}]
    going_on, _ = _job(str(tmp_path / "d"), train_steps=7, model_bank=bank)
    with caplog.at_level("INFO", logger="recis.framework.trainer"):
        assert going_on.restore() == 6
    assert f"warm-started from model bank entry {tmp_path / 'b'} at step 6" in caplog.text


def test_a_job_resumed_past_its_limit_says_there_is_nothing_to_train(tmp_path, caplog):
    first, trained = _job(str(tmp_path), train_steps=4)
    first.train()
    caplog.set_level("WARNING", logger="recis.framework.trainer")
    again, model = _job(str(tmp_path), train_steps=2)
    assert again.train().global_step == 4
    assert "nothing to train: the job resumed at step 4 has reached train_steps=2" in caplog.text
    assert_equal(weights(trained), weights(model))  # restored, not trained
    # Two epochs of 8 batches, then the same job again.
    _job(str(tmp_path / "e"), train_steps=None, train_epoch=2)[0].train()
    caplog.clear()
    _job(str(tmp_path / "e"), train_steps=None, train_epoch=2)[0].train()
    assert "resumed at step 16 has reached train_epoch=2; raise it to train on" in caplog.text


def test_a_resumed_job_says_which_hyperparameters_the_checkpoint_restored(tmp_path, caplog):
    _job(str(tmp_path), train_steps=4)[0].train()  # StepLR halves the dense lr at step 3
    caplog.set_level("INFO", logger="recis.framework.trainer")
    _job(str(tmp_path), train_steps=5)[0].train()
    assert (
        "restored from the checkpoint: the dense optimizer's lr 0.05 (built with 0.1)"
        in caplog.text
    )


def _job_with_sparse_schedule(out_dir: str, train_steps: int):
    """A job whose sparse optimizer (recis SparseAdagrad) halves its lr every 3 steps."""
    trainer, model = _job(out_dir, train_steps)
    sparse = SparseAdagrad(filter_out_sparse_param(model), lr=0.2)
    trainer.sparse_optimizer = sparse
    trainer.sparse_lr_scheduler = torch.optim.lr_scheduler.StepLR(sparse, step_size=3, gamma=0.5)
    return trainer, model


def test_a_sparse_lr_schedule_resumes_where_it_was(tmp_path):
    straight, model_a = _job_with_sparse_schedule(str(tmp_path / "a"), train_steps=7)
    straight.train()
    _job_with_sparse_schedule(str(tmp_path / "b"), train_steps=4)[0].train()
    resumed, model_b = _job_with_sparse_schedule(str(tmp_path / "b"), train_steps=7)
    resumed.train()
    assert straight.sparse_optimizer.param_groups[0]["lr"] == 0.2 * 0.5**2
    assert resumed.sparse_optimizer.param_groups[0]["lr"] == 0.2 * 0.5**2
    assert_equal(weights(model_a), weights(model_b))


def test_a_dataset_without_a_read_position_resumes_after_the_batches_it_trained(tmp_path, caplog):
    # A plain list starts every epoch over: the resumed job skips what was trained.
    batches = make_batches(6, 4, 0)
    # Stopped in epoch 0, in epoch 1, and (k=2) at the end of epoch 0 before it knew.
    for interrupted_at, k, skipped, epoch in ((4, 1, 4, 0), (8, 1, 2, 1), (3, 2, 6, 0)):
        out = tmp_path / f"{interrupted_at}-{k}"
        plan = {"train_steps": None, "train_epoch": 2, "gradient_accumulation_steps": k}
        straight, model_a = _job(str(out / "a"), data=batches, **plan)
        straight.train()
        _job(str(out / "b"), data=batches, **{**plan, "train_steps": interrupted_at})[0].train()
        caplog.clear()
        with caplog.at_level("WARNING", logger="recis.framework.trainer"):
            resumed, model_b = _job(str(out / "b"), data=batches, **plan)
            resumed.train()
        assert resumed.state.global_step == straight.state.global_step == 12 // k
        assert_equal(weights(model_a), weights(model_b))
        assert (
            f"reading the {skipped} batches of epoch {epoch} trained before the checkpoint "
            "again, to skip them" in caplog.text
        )


def test_the_batches_skipped_are_counted_in_batches_not_steps(tmp_path, caplog):
    # Stopped at step 4 of k=1, resumed with k=2: the 4 batches trained are skipped.
    batches = make_batches(6, 4, 0)
    plan = {"train_steps": None, "train_epoch": 2}
    _job(str(tmp_path), data=batches, **{**plan, "train_steps": 4})[0].train()
    with caplog.at_level("WARNING", logger="recis.framework.trainer"):
        resumed, _ = _job(str(tmp_path), data=batches, **plan, gradient_accumulation_steps=2)
        resumed.train()
    assert "reading the 4 batches of epoch 0 trained before the checkpoint" in caplog.text
    assert resumed.state.global_step == 4 + 1 + 3  # epoch 0's last 2 batches, then 6 by 2


def test_background_saves_hold_their_step_and_resume_like_blocking_ones(tmp_path):
    blocking, model_a = _job(str(tmp_path / "a"), train_steps=6)
    blocking.train()
    first, _ = _job(str(tmp_path / "b"), train_steps=5, async_save=True)
    saver, calls = first.checkpoints.saver, []
    save = saver.save
    saver.save = lambda ckpt_id, blocking=True: (
        calls.append((ckpt_id, blocking)) or save(ckpt_id, blocking)
    )
    first.train()
    assert calls == [("ckpt-2", False), ("ckpt-4", False), ("ckpt-5", True)]
    assert saver.wait() is None  # train() waited for the background save
    # Steps 3 and 4 may run while ckpt-2 is written: it holds step 2's values all the same.
    for ckpt_id in ("ckpt-2", "ckpt-4"):
        loaded = []
        for out in ("a", "b"):
            trainer, model = _job(str(tmp_path / "c"), train_steps=6)
            trainer.checkpoints.saver.load(str(tmp_path / out), ckpt_id)
            loaded.append(weights(model))
        assert_equal(*loaded)
    second, model_b = _job(str(tmp_path / "b"), train_steps=6, async_save=True)
    second.train()
    assert second.checkpoints.saver.checkpoints() == ["ckpt-2", "ckpt-4", "ckpt-5", "ckpt-6"]
    assert_equal(weights(model_a), weights(model_b))


def test_a_failed_background_save_stops_the_job_at_its_next_save(tmp_path, monkeypatch):
    from recis.framework import checkpoint_manager

    write_rank = checkpoint_manager.write_rank

    def full_disk_at_step_2(*args, **kwargs):
        if args[-1] == "saving ckpt-2":
            raise OSError(28, "No space left on device")
        return write_rank(*args, **kwargs)

    monkeypatch.setattr(checkpoint_manager, "write_rank", full_disk_at_step_2)
    trainer, _ = _job(str(tmp_path), train_steps=6, async_save=True)
    with pytest.raises(CheckpointError, match=r"ckpt-2 was not saved: rank 0: OSError"):
        trainer.train()
    assert trainer.state.global_step == 4  # stopped at the save after it
    assert trainer.checkpoints.saver.checkpoints() == []


class FailAfterStep(Hook):
    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, metrics, global_step):
        if global_step == self.step:
            raise ValueError(f"a hook failed after step {global_step}")


def test_an_error_while_a_background_save_is_written_lets_it_finish(tmp_path, monkeypatch, caplog):
    release = held_writes(monkeypatch, 30.0)  # ckpt-2 is still being written at step 3
    hooks = [ReleaseAfterStep(3, release), FailAfterStep(3)]
    trainer, _ = _job(str(tmp_path), train_steps=6, hooks=hooks, async_save=True)
    log = caplog.at_level("WARNING", logger="recis.framework.trainer")
    with log, pytest.raises(ValueError, match="a hook failed after step 3"):
        trainer.train()
    assert trainer.checkpoints.saver.checkpoints() == ["ckpt-2"]
    assert "stopping at step 3: finishing the background save of 'ckpt-2' first" in caplog.text
    assert "the background save of 'ckpt-2' is complete" in caplog.text


def test_background_saves_that_would_not_fit_in_memory_stop_the_start(
    tmp_path, monkeypatch, caplog
):
    from recis.distributed import host_memory

    trainer, _ = _job(str(tmp_path), train_steps=2, async_save=True)
    monkeypatch.setattr(host_memory, "available_host_memory", lambda: 1000)
    with pytest.raises(
        MemoryError,
        match=r"async_save: the ranks on host .* need .* for the copy a background save makes",
    ):
        trainer.train()
    assert trainer.state.global_step == 0
    # Room for the copies but little more: a warning, and the job trains.
    need = rank_checkpoint_bytes(trainer.model, trainer.sparse_optimizer)
    monkeypatch.setattr(host_memory, "available_host_memory", lambda: int(need / 0.95))
    with caplog.at_level("WARNING", logger="recis.framework.trainer"):
        assert trainer.train().global_step == 2
    assert "the training may run out of memory at a save" in caplog.text
