"""LoggerHook, ProfilerHook and TensorBoardHook on real (single-process) training runs."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time

import pytest

from recis.framework.checkpoint_manager import Saver
from recis.framework.metrics import BinaryClassificationMetric
from recis.hooks import Hook, LoggerHook, ProfilerHook, TensorBoardHook
from tests.framework.test_trainer import ToyModel, build_trainer, make_batches


class Recorder(Hook):
    """Keeps each step's metrics."""

    def __init__(self) -> None:
        self.metrics: dict[int, dict] = {}

    def after_step(self, metrics, global_step):
        self.metrics[global_step] = metrics


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_logger_hook_plain_lines(tmp_path):
    out = io.StringIO()
    rec = Recorder()
    trainer = build_trainer(
        ToyModel(),
        make_batches(5, 4, 0),
        str(tmp_path),
        hooks=[LoggerHook(log_steps=2, stream=out), rec],
        train_steps=5,
    )
    trainer.train()
    trainer.evaluate(make_batches(2, 8, 1))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()  # evaluations: the Trainer's log
    # Every second step, and the last step (5) although it is not a multiple of 2.
    for line, steps in zip(lines[:3], ((1, 2), (3, 4), (5,)), strict=True):
        step = steps[-1]
        assert line.startswith(f"step {step}/5 [")
        assert f" loss {float(rec.metrics[step]['loss']):.4f}" in line
        assert "samples/s" in line and "ETA " in line
        # AUC over the predictions of the steps since the previous line.
        window = BinaryClassificationMetric()
        for s in steps:
            window.update(*rec.metrics[s]["auc"])
        assert line.endswith(f" | auc(rank 0) {window.compute()['auc']:.4f}")


def test_logger_hook_rate_leaves_out_checkpoint_saves(tmp_path, monkeypatch):
    # Every save takes 0.3 s more; the lines after one show it and a rate of the
    # training time alone.
    save = Saver.save

    def slow_save(self, *args, **kwargs):
        time.sleep(0.3)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Saver, "save", slow_save)
    out = io.StringIO()
    trainer = build_trainer(
        ToyModel(),
        make_batches(4, 4, 0),
        str(tmp_path),
        hooks=[LoggerHook(log_steps=2, stream=out)],
        train_steps=4,
        save_steps=2,
    )
    trainer.train()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert trainer.state.checkpoint_seconds >= 0.6
    for line in lines:
        assert float(line.split(" | checkpoint ")[1].split(" s")[0]) >= 0.3, line
        rate = float(line.split(" samples/s")[0].rsplit(" ", 1)[1])
        assert rate > 2 * 4 / 0.3, line  # two steps of 4 samples, not over the 0.3 s sleep


class SlowBatches(list):
    """Batches that take 0.3 s to read, all told."""

    def __iter__(self):
        time.sleep(0.3)
        return super().__iter__()


def test_logger_hook_rate_leaves_out_evaluations(tmp_path):
    out = io.StringIO()
    trainer = build_trainer(
        ToyModel(),
        make_batches(4, 4, 0),
        str(tmp_path),
        hooks=[LoggerHook(log_steps=2, stream=out)],
        eval_data=SlowBatches(make_batches(2, 4, 9)),
        train_steps=4,
        eval_every_steps=2,
    )
    trainer.train()
    lines = [line for line in out.getvalue().splitlines() if line.startswith("step")]
    assert len(lines) == 2 and " | eval " not in lines[0], lines
    # The evaluation after step 2 falls between the two lines.
    assert float(lines[1].split(" | eval ")[1].split(" s")[0]) >= 0.3, lines[1]
    rate = float(lines[1].split(" samples/s")[0].rsplit(" ", 1)[1])
    assert rate > 2 * 4 / 0.3, lines[1]
    assert trainer.state.evaluation_seconds >= 0.6


class StreamSayingItsProgress:
    """Batches of unknown number that say how far into the epoch they are, as
    recis.io.CriteoDataset does by bytes."""

    def __init__(self, batches: list) -> None:
        self.batches, self.handed_out = batches, 0

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            self.handed_out = i + 1
            yield batch
        self.handed_out = 0  # the next epoch

    def epoch_progress(self) -> float:
        return self.handed_out / len(self.batches)


@pytest.mark.parametrize(
    ("limits", "heads"),
    [
        ({"train_epoch": 2}, ["step 2 [25%]", "step 4 [50%]", "step 6 [75%]", "step 8 [100%]"]),
        # Training ends at whichever limit comes first: the fraction is the larger.
        (
            {"train_epoch": 2, "train_steps": 6},
            ["step 2/6 [33%]", "step 4/6 [67%]", "step 6/6 [100%]"],
        ),
    ],
)
def test_logger_hook_shows_the_progress_of_epochs_of_unknown_length(tmp_path, limits, heads):
    out = io.StringIO()
    data = StreamSayingItsProgress(make_batches(4, 4, 0))
    trainer = build_trainer(
        ToyModel(), data, str(tmp_path), hooks=[LoggerHook(log_steps=2, stream=out)], **limits
    )
    assert trainer.total_steps == limits.get("train_steps") and trainer.progress == 0.0
    trainer.train()
    lines = out.getvalue().splitlines()
    assert len(lines) == len(heads)
    for line, head in zip(lines, heads, strict=True):
        assert line.startswith(head + " loss ") and "ETA " in line
    assert trainer.progress == 1.0


def _train_4_steps_on_a_tty(tmp_path, **args) -> str:
    """What a LoggerHook logging every step writes to a terminal over 4 steps."""
    out = TTY()
    hook = LoggerHook(log_steps=1, stream=out)
    build_trainer(
        ToyModel(), make_batches(4, 4, 0), str(tmp_path), hooks=[hook], train_steps=4, **args
    ).train()
    return out.getvalue()


def test_logger_hook_progress_bar_on_tty(tmp_path):
    text = _train_4_steps_on_a_tty(tmp_path)
    # One line redrawn in place four times, ended by a newline after training.
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "[" + "#" * LoggerHook.BAR_WIDTH + "] step 4/4 [100%]" in text


def test_logger_hook_ends_the_bar_before_an_evaluation(tmp_path):
    # The evaluation's progress and results are logged: not onto the end of the bar.
    text = _train_4_steps_on_a_tty(tmp_path, eval_data=make_batches(2, 8, 1), eval_every_steps=2)
    bar_1, bar_2, end = text.split("\n")
    assert "step 2/4 [50%]" in bar_1.split("\r")[-1] and "step 4/4" in bar_2.split("\r")[-1]
    assert end == ""


def test_logger_hook_rejects_bad_interval():
    with pytest.raises(ValueError, match="log_steps"):
        LoggerHook(log_steps=0)


def test_profiler_hook_writes_a_trace_for_the_window(tmp_path):
    hook = ProfilerHook(str(tmp_path / "prof"), start_step=1, num_steps=2)
    trainer = build_trainer(
        ToyModel(), make_batches(5, 4, 0), str(tmp_path), hooks=[hook], train_steps=5
    )
    trainer.train()
    assert hook.trace_paths == [str(tmp_path / "prof" / "trace_rank0_steps2-3.json")]
    with open(hook.trace_paths[0]) as f:
        trace = json.load(f)
    assert any(
        "_train_step" in e.get("name", "") or "aten::" in e.get("name", "")
        for e in trace["traceEvents"]
    )


def test_profiler_hook_flushes_a_window_cut_short(tmp_path):
    hook = ProfilerHook(str(tmp_path / "prof"), start_step=1, num_steps=5)
    trainer = build_trainer(
        ToyModel(), make_batches(3, 4, 0), str(tmp_path), hooks=[hook], train_steps=3
    )
    trainer.train()
    assert hook.trace_paths == [str(tmp_path / "prof" / "trace_rank0_steps2-3.json")]
    assert os.path.getsize(hook.trace_paths[0]) > 0


def test_tensorboard_hook_explains_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardHook()


def test_tensorboard_hook_writes_scalars(tmp_path):
    # tensorboard is an optional extra, not a recis dependency: test it where installed.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    out = io.StringIO()
    trainer = build_trainer(
        ToyModel(),
        make_batches(4, 4, 0),
        str(tmp_path),
        hooks=[TensorBoardHook(str(log_dir), log_steps=2), LoggerHook(log_steps=2, stream=out)],
        train_steps=4,
    )
    trainer.train()
    trainer.evaluate(make_batches(2, 8, 1))
    events = EventAccumulator(str(log_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "eval/auc", "eval/logloss", "eval/loss"} <= set(tags)
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert [e.step for e in events.Scalars("eval/auc")] == [4]
    # What LoggerHook prints besides the loss: the rate and rank 0's window AUC.
    assert [e.step for e in events.Scalars("train/samples_per_sec")] == [2, 4]
    assert all(e.value > 0 for e in events.Scalars("train/samples_per_sec"))
    printed = [float(a) for a in re.findall(r"auc\(rank 0\) ([0-9.]+)", out.getvalue())]
    window_aucs = events.Scalars("train/auc_rank0")
    assert [e.step for e in window_aucs] == [2, 4]
    assert [round(e.value, 4) for e in window_aucs] == printed
