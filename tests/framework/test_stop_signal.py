"""SIGTERM: every rank finishes the step after it, saves a checkpoint and stops; the
job resumed from it ends exactly like one that was never stopped. SIGINT (Ctrl-C)
stops at once, after saying which checkpoint a rerun resumes from."""

from __future__ import annotations

import re
import signal
import threading

import pytest
import torch
import torch.distributed as dist

from recis.framework.stop_signal import StopSignal
from recis.hooks import Hook
from recis.testing import run_distributed
from tests.framework.test_trainer import Recorder, ToyModel, build_trainer, make_batches, weights
from tests.framework.test_trainer_resume import (
    ReleaseAfterStep,
    ResumableBatches,
    assert_equal,
    held_writes,
)


@pytest.fixture
def recorded_sigterm():
    """SIGTERM's handler during the test: records the signals that reach it instead of
    ending pytest (the Trainer's own handler, while installed, comes first)."""
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_sets_a_flag_however_often_it_comes(recorded_sigterm):
    # Slurm signals every process of a step and torchrun passes its own SIGTERM on: a
    # worker may get two, and must still save.
    with StopSignal() as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and recorded_sigterm == []
    signal.raise_signal(signal.SIGTERM)  # the handler from before is back
    assert recorded_sigterm == [signal.SIGTERM]


def test_outside_the_main_thread_sigterm_keeps_its_action(recorded_sigterm):
    stops: list[StopSignal] = []

    def enter() -> None:
        with StopSignal() as stop:
            stops.append(stop)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    signal.raise_signal(signal.SIGTERM)
    assert recorded_sigterm == [signal.SIGTERM] and not stops[0].requested


class SigtermWhileReading(ResumableBatches):
    """Sends SIGTERM to its own process as it yields batch ``at`` (0-based), once."""

    def __init__(self, batches: list, at: int | None) -> None:
        super().__init__(batches)
        self.at = at

    def __iter__(self):
        for batch in super().__iter__():
            if self.pos - 1 == self.at:
                self.at = None
                signal.raise_signal(signal.SIGTERM)
            yield batch


def _job(out_dir: str, sigterm_at: int | None, hooks=None, eval_data=None, **args):
    torch.manual_seed(5)
    model = ToyModel()
    rank = dist.get_rank() if dist.is_initialized() else 0
    data = SigtermWhileReading(make_batches(12, 4, rank), sigterm_at)
    args.setdefault("train_steps", 6)
    trainer = build_trainer(
        model, data, out_dir, hooks=hooks, eval_data=eval_data, save_steps=4, **args
    )
    return trainer, model


@pytest.mark.parametrize("k", [1, 2])
def test_sigterm_saves_and_stops_and_the_resumed_job_ends_as_if_never_stopped(
    tmp_path, k, recorded_sigterm
):
    straight, model_a = _job(str(tmp_path / "a"), None, gradient_accumulation_steps=k)
    straight.train()

    # SIGTERM while the third step's batches are read: that step is trained, then saved.
    rec = Recorder()
    stopped, _ = _job(str(tmp_path / "b"), 2 * k, hooks=[rec], gradient_accumulation_steps=k)
    before = signal.getsignal(signal.SIGTERM)
    state = stopped.train()
    assert state.stopped_by_signal and state.global_step == 3
    assert (tmp_path / "b" / "checkpoint").read_text().split() == ["ckpt-3"]
    assert rec.calls[-2:] == [("after_train",), ("end",)]
    assert signal.getsignal(signal.SIGTERM) is before and recorded_sigterm == []

    resumed, model_b = _job(str(tmp_path / "b"), None, gradient_accumulation_steps=k)
    state = resumed.train()
    assert not state.stopped_by_signal and state.global_step == 6
    assert resumed.train_dataset.pos == 6 * k  # no batch skipped or read twice
    assert_equal(weights(model_a), weights(model_b))


@pytest.mark.parametrize("async_save", [False, True])
def test_sigterm_right_after_a_save_stops_without_another_step(
    tmp_path, recorded_sigterm, caplog, monkeypatch, async_save
):
    # SIGTERM while the batches after step 4's save are read: ckpt-4 already holds
    # everything, and its data position is before those batches. Written in the
    # background, it is complete when train() returns.
    straight, model_a = _job(str(tmp_path / "a"), None)
    straight.train()
    stopped, _ = _job(str(tmp_path / "b"), 4, async_save=async_save)
    if async_save:
        held_writes(monkeypatch, 1.0)
    with caplog.at_level("WARNING", logger="recis.framework.trainer"):
        state = stopped.train()
    saved = "being written" if async_save else "saved"
    assert f"SIGTERM: its checkpoint is {saved} at step 4 and stopping" in caplog.text
    assert state.stopped_by_signal and state.global_step == 4
    assert (tmp_path / "b" / "checkpoint").read_text().split() == ["ckpt-4"]
    resumed, model_b = _job(str(tmp_path / "b"), None)
    resumed.train()
    assert resumed.train_dataset.pos == 6
    assert_equal(weights(model_a), weights(model_b))


def test_save_on_sigterm_false_leaves_sigterm_alone(tmp_path, recorded_sigterm):
    trainer, _ = _job(str(tmp_path), 2, save_on_sigterm=False)
    state = trainer.train()
    assert recorded_sigterm == [signal.SIGTERM]  # reached the handler from before
    assert not state.stopped_by_signal and state.global_step == 6


def _stop_on_one_rank(out_dir: str) -> tuple[bool, int, list[str]]:
    # Only rank 1 gets SIGTERM (at its second batch); both ranks stop at step 2.
    trainer, _ = _job(out_dir, 1 if dist.get_rank() == 1 else None)
    state = trainer.train()
    with open(f"{out_dir}/checkpoint") as f:
        committed = f.read().split()
    return state.stopped_by_signal, state.global_step, committed


def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    results = run_distributed(_stop_on_one_rank, 2, str(tmp_path), timeout=90)
    assert results == [(True, 2, ["ckpt-2"])] * 2


def test_sigterm_during_an_evaluation_inside_train_stops_it_and_saves(tmp_path, recorded_sigterm):
    rec = Recorder()
    eval_data = SigtermWhileReading(make_batches(4, 6, 100), at=1)
    trainer, _ = _job(str(tmp_path), None, hooks=[rec], eval_data=eval_data, eval_every_steps=2)
    state = trainer.train()
    # The evaluation after step 2 stops at its second batch; step 2 is saved.
    assert state.stopped_by_signal and state.global_step == 2
    assert (tmp_path / "checkpoint").read_text().split() == ["ckpt-2"]
    assert ("before_evaluate",) in rec.calls and ("after_evaluate",) not in rec.calls
    assert trainer.last_evaluation is None and trainer.model.training
    assert recorded_sigterm == []  # the Trainer's handler took it
    assert trainer.evaluate()["count"] == 24  # outside train(), a whole evaluation again


class CtrlCAfterStep(Hook):
    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, metrics, global_step):
        if global_step == self.step:
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("save_steps", [2, None])
def test_ctrl_c_stops_at_once_and_says_which_checkpoint_a_rerun_resumes(
    tmp_path, caplog, save_steps
):
    rec = Recorder()
    trainer = build_trainer(
        ToyModel(),
        make_batches(6, 4, 0),
        str(tmp_path),
        hooks=[CtrlCAfterStep(3), rec],
        train_steps=6,
        save_steps=save_steps,
    )
    log = caplog.at_level("WARNING", logger="recis.framework.trainer")
    with log, pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert trainer.state.global_step == 3 and rec.calls[-1] == ("end",)
    if save_steps:
        said = f"the newest checkpoint is {tmp_path / 'ckpt-2'}: running the job again resumes"
        assert f"interrupted at step 3; {said}" in caplog.text
    else:
        assert "interrupted at step 3, before any checkpoint was saved" in caplog.text
        assert not (tmp_path / "checkpoint").exists()


def test_ctrl_c_during_a_background_save_lets_it_finish_first(tmp_path, caplog, monkeypatch):
    release = held_writes(monkeypatch, 30.0)  # ckpt-2 is still being written at step 3
    trainer = build_trainer(
        ToyModel(),
        make_batches(6, 4, 0),
        str(tmp_path),
        hooks=[ReleaseAfterStep(3, release), CtrlCAfterStep(3)],
        train_steps=6,
        save_steps=2,
        async_save=True,
    )
    log = caplog.at_level("WARNING", logger="recis.framework.trainer")
    with log, pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert trainer.checkpoints.saver.background_save is None
    assert (tmp_path / "checkpoint").read_text().split() == ["ckpt-2"]
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == "interrupted at step 3: finishing the background save of 'ckpt-2' first"
    assert re.fullmatch(r"the background save of 'ckpt-2' is complete \(\d+\.\d s\)", said[1])
    assert said[2] == (
        f"interrupted at step 3; the newest checkpoint is {tmp_path / 'ckpt-2'}: running the "
        "job again resumes from it"
    )


class CtrlCWhileReading(list):
    def __iter__(self):
        for i, batch in enumerate(super().__iter__()):
            if i == 2:
                signal.raise_signal(signal.SIGINT)
            yield batch


def test_ctrl_c_during_an_evaluation_says_how_far_it_got(tmp_path, caplog):
    trainer = build_trainer(ToyModel(), make_batches(2, 4, 0), str(tmp_path))
    log = caplog.at_level("WARNING", logger="recis.framework.trainer")
    with log, pytest.raises(KeyboardInterrupt):
        trainer.evaluate(CtrlCWhileReading(make_batches(4, 4, 1)))
    assert "evaluation at step 0: interrupted after 2 batches" in caplog.text
    assert trainer.model.training  # the model's mode is back


@pytest.mark.parametrize("from_model_bank", [False, True])
def test_ctrl_c_while_restoring_says_a_rerun_loads_it_again(
    tmp_path, caplog, monkeypatch, from_model_bank
):
    trainer = build_trainer(ToyModel(), make_batches(2, 4, 0), str(tmp_path / "a"), save_steps=2)
    trainer.train()
    if from_model_bank:
        bank = [{"path": str(tmp_path / "a"), "load": ["sparse", "dense"]}]
        trainer = build_trainer(
            ToyModel(), make_batches(2, 4, 0), str(tmp_path / "b"), model_bank=bank
        )
        loading = f"model bank entry {tmp_path / 'a'}"
    else:
        trainer = build_trainer(ToyModel(), make_batches(2, 4, 0), str(tmp_path / "a"))
        loading = str(tmp_path / "a" / "ckpt-2")
    saver = type(trainer.checkpoints.saver)
    monkeypatch.setattr(saver, "_load", lambda *a, **k: signal.raise_signal(signal.SIGINT))
    log = caplog.at_level("WARNING", logger="recis.framework.trainer")
    with log, pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert f"interrupted while loading {loading}, before training: running the job again" in (
        caplog.text
    )
    assert trainer.state.global_step == 0


class CtrlCWhileMeasured(list):
    """Batches whose files take long to measure (a big remote dataset): Ctrl-C then."""

    def shared_setup(self):
        signal.raise_signal(signal.SIGINT)


def test_ctrl_c_while_checking_the_setup_says_nothing_was_written(tmp_path, caplog):
    out = tmp_path / "run"
    trainer = build_trainer(ToyModel(), CtrlCWhileMeasured(make_batches(2, 4, 0)), str(out))
    log = caplog.at_level("WARNING", logger="recis.framework.trainer")
    with log, pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert (
        "interrupted before training, while checking the ranks' setup and data: nothing was "
        f"written to {out}"
    ) in caplog.text
    assert not out.exists()
