"""TensorBoardHook: training and evaluation scalars for TensorBoard (optional extra)."""

from __future__ import annotations

import math
import os
from typing import Any

from recis.framework.metrics import Predictions
from recis.hooks.hook import Hook
from recis.hooks.report_window import PredictionWindow, Throughput


class TensorBoardHook(Hook):
    """Rank 0 writes the scalar metrics every ``log_steps`` steps and every evaluation.

    Training scalars go under ``train/<name>``, evaluation results under
    ``eval/<name>``, both at the global step. Every ``log_steps`` steps also
    ``train/samples_per_sec`` (over all ranks, saves and evaluations left out) and,
    for each :class:`Predictions` metric, the AUC of rank 0's predictions since the
    previous write (``train/auc_rank0``, ``train/<name>/auc_rank0``), as LoggerHook
    prints them. Needs the ``tensorboard`` package
    (``pip install tensorboard``), which recis does not depend on. ``log_dir``
    defaults to ``<output_dir>/tensorboard`` of the trainer the hook is added to.

    Example::

        >>> trainer.add_hook(TensorBoardHook(log_steps=50))
    """

    def __init__(self, log_dir: str | None = None, log_steps: int = 100) -> None:
        try:
            import tensorboard  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "TensorBoardHook needs the tensorboard package: pip install tensorboard"
            ) from e
        if not isinstance(log_steps, int) or log_steps < 1:
            raise ValueError(f"log_steps must be an int >= 1, got {log_steps!r}")
        self.log_dir = log_dir
        self.log_steps = log_steps
        self._writer = None
        self._window = PredictionWindow()
        self._throughput = Throughput()

    def _get_writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self.log_dir
            if log_dir is None:
                base = self.trainer.args.output_dir if self.trainer is not None else "."
                log_dir = os.path.join(base, "tensorboard")
            self._writer = SummaryWriter(log_dir=log_dir)
        return self._writer

    def _write(self, prefix: str, metrics: dict[str, Any], step: int) -> None:
        writer = self._get_writer()
        for name, value in metrics.items():
            if isinstance(value, (Predictions, str)):
                continue
            writer.add_scalar(f"{prefix}/{name}", float(value), step)
        writer.flush()

    def before_train(self) -> None:
        self._window.clear()
        self._throughput.start(self.trainer)

    def after_step(self, metrics: dict[str, Any], global_step: int) -> None:
        if not self.is_main_process:
            return
        self._window.add(metrics)
        if global_step % self.log_steps:
            return
        scalars = dict(metrics)
        if self.trainer is not None:
            rate, _ = self._throughput.report(self.trainer)
            if rate is not None:
                scalars["samples_per_sec"] = rate
        for name, auc in self._window.aucs().items():
            if not math.isnan(auc):  # one class only in the window
                scalars["auc_rank0" if name == "auc" else f"{name}/auc_rank0"] = auc
        self._write("train", scalars, global_step)

    def after_evaluate(self, metrics: dict[str, Any]) -> None:
        if self.is_main_process:
            step = self.trainer.state.global_step if self.trainer is not None else 0
            self._write("eval", metrics, step)

    def end(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
