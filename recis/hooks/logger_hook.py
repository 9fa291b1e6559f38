"""LoggerHook: progress, loss, throughput, ETA and metrics, printed by rank 0."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from recis.framework.metrics import Predictions, format_metric
from recis.hooks.hook import Hook
from recis.hooks.report_window import PredictionWindow, Throughput


def _format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class LoggerHook(Hook):
    """Every ``log_steps`` optimizer steps, rank 0 prints one line of progress.

    The line holds the step (of the total when known) and the fraction of the run done
    (:attr:`Trainer.progress <recis.framework.trainer.Trainer.progress>`: for epochs of
    a file dataset, by the bytes rank 0 has read), the loss, samples/s over all
    ranks (this rank's samples times the world size, over the time not spent saving
    checkpoints or evaluating; a save or evaluation since the previous line shows as
    ``checkpoint 22.9 s`` or ``eval 41.0 s``), the ETA, the other scalar
    metrics of that step and, for each :class:`Predictions` metric, the AUC of rank
    0's predictions since the previous line (``auc(rank 0)``: no collective, so the
    hook may be added on rank 0 only; ``Trainer.evaluate`` gives the exact AUC over
    all ranks). The last step of a training gets its line too, whatever its number.
    When ``stream`` is a terminal the line is a progress bar redrawn in place;
    otherwise (files, CI logs) each is a plain line. Evaluation results are the
    Trainer's to log (``evaluation at step 1500: auc 0.8309, logloss 0.4867, ...``).

    Example::

        >>> trainer.add_hook(LoggerHook(log_steps=100))
        step 100/1000 [10%] loss 0.4712 | 51234 samples/s | ETA 0:01:20 | auc(rank 0) 0.7431
    """

    BAR_WIDTH = 20

    def __init__(self, log_steps: int = 100, stream: TextIO | None = None) -> None:
        if not isinstance(log_steps, int) or log_steps < 1:
            raise ValueError(f"log_steps must be an int >= 1, got {log_steps!r}")
        self.log_steps = log_steps
        self.stream = stream
        self._bar_open = False
        self._width = 0
        self._window = PredictionWindow()
        self._throughput = Throughput()
        self._unlogged: tuple[dict[str, Any], int] | None = None

    @property
    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def _is_tty(self) -> bool:
        isatty = getattr(self._out, "isatty", None)
        return bool(isatty and isatty())

    def _emit(self, line: str, progress: bool = False) -> None:
        out = self._out
        if progress and self._is_tty():
            # Redraw in place; pad to the previous line's width so no tail of it remains.
            out.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self._bar_open = True
        else:
            if self._bar_open:
                out.write("\n")
                self._bar_open = False
            out.write(line + "\n")
        out.flush()

    def before_train(self) -> None:
        self._start_time = time.monotonic()
        self._throughput.start(self.trainer)
        self._start_progress = self._progress()
        self._window.clear()
        self._unlogged = None

    def after_step(self, metrics: dict[str, Any], global_step: int) -> None:
        if not self.is_main_process:
            return
        self._window.add(metrics)
        if global_step % self.log_steps:
            self._unlogged = (metrics, global_step)
            return
        self._log_progress(metrics, global_step)

    def after_train(self) -> None:
        if self.is_main_process and self._unlogged is not None:
            self._log_progress(*self._unlogged)

    def _progress(self) -> float | None:
        return self.trainer.progress if self.trainer is not None else None

    def _log_progress(self, metrics: dict[str, Any], global_step: int) -> None:
        self._unlogged = None
        aucs = self._window.aucs()
        trainer = self.trainer
        now = time.monotonic()
        total = trainer.total_steps if trainer is not None else None
        frac = self._progress()
        head = f"step {global_step}" + (f"/{total}" if total else "")
        if frac is not None:
            head += f" [{frac:.0%}]"
            if self._is_tty():
                filled = round(frac * self.BAR_WIDTH)
                head = "[" + "#" * filled + "." * (self.BAR_WIDTH - filled) + "] " + head
        parts = [head]
        if "loss" in metrics:
            parts[0] += f" loss {float(metrics['loss']):.4f}"
        if trainer is not None:
            rate, spent = self._throughput.report(trainer)
            if rate is not None:
                parts.append(f"{rate:.0f} samples/s")
            parts += [
                f"{name} {seconds:.1f} s" for name, seconds in spent.items() if seconds >= 0.05
            ]
            done = None if frac is None else frac - (self._start_progress or 0.0)
            if done is not None and done > 0:
                eta = (1.0 - frac) * (now - self._start_time) / done
                parts.append(f"ETA {_format_duration(eta)}")
        for name, value in metrics.items():
            if name != "loss" and not isinstance(value, Predictions):
                parts.append(f"{name} {format_metric(value)}")
        for name, auc in aucs.items():
            if not math.isnan(auc):  # one class only in the window
                label = "auc" if name == "auc" else f"{name}/auc"
                parts.append(f"{label}(rank 0) {auc:.4f}")
        self._emit(" | ".join(parts), progress=True)

    def before_evaluate(self) -> None:
        # The evaluation's progress and results are logged: not onto the end of the bar.
        self._close_bar()

    def end(self) -> None:
        # Also after an error: the traceback should not start on the progress line.
        self._close_bar()

    def _close_bar(self) -> None:
        if self.is_main_process and self._bar_open:
            self._out.write("\n")
            self._out.flush()
            self._bar_open = False
