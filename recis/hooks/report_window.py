"""What the reporting hooks tell about the steps since their previous report."""

from __future__ import annotations

import time
from typing import Any

from recis.framework.metrics import PredictionBuffer, Predictions, binary_auc


class PredictionWindow:
    """This rank's predictions of each :class:`Predictions` metric since the last
    :meth:`aucs`, kept on the predictions' device (a GPU run syncs once per report).

    Example::

        >>> window = PredictionWindow()
        >>> window.add(metrics)         # every step
        >>> window.aucs()               # every report: {"auc": 0.79}, then empty again
    """

    def __init__(self) -> None:
        self._buffers: dict[str, PredictionBuffer] = {}

    def add(self, metrics: dict[str, Any]) -> None:
        for name, value in metrics.items():
            if isinstance(value, Predictions):
                if name not in self._buffers:
                    self._buffers[name] = PredictionBuffer(device=value.preds.device)
                self._buffers[name].append(value.preds, value.labels)

    def aucs(self) -> dict[str, float]:
        """The AUC of each metric over the window (NaN with one class only); empties it."""
        aucs = {name: binary_auc(*buffer.tensors()) for name, buffer in self._buffers.items()}
        self.clear()
        return aucs

    def clear(self) -> None:
        for buffer in self._buffers.values():
            buffer.clear()


def _paused_seconds(state: Any) -> dict[str, float]:
    """Time in checkpoint saves and evaluations so far, which the rate leaves out."""
    return {
        "checkpoint": state.checkpoint_seconds if state else 0.0,
        "eval": state.evaluation_seconds if state else 0.0,
    }


class Throughput:
    """Samples per second over all ranks between reports: this rank's samples (the
    Trainer's ``state.samples``) times the world size, over the time not spent saving
    checkpoints or evaluating.

    Example::

        >>> throughput = Throughput()
        >>> throughput.start(trainer)   # before_train
        >>> throughput.report(trainer)  # every report: (51234.0, {"checkpoint": 22.9, "eval": 0.0})
    """

    def start(self, trainer: Any) -> None:
        state = trainer.state if trainer is not None else None
        self._last_time = time.monotonic()
        self._last_samples = state.samples if state else 0
        self._last_paused = _paused_seconds(state)

    def report(self, trainer: Any) -> tuple[float | None, dict[str, float]]:
        """``(samples/s, {"checkpoint": s, "eval": s})`` since the previous report;
        the rate is None when no time went to training."""
        now = time.monotonic()
        samples, paused = trainer.state.samples, _paused_seconds(trainer.state)
        spent = {name: paused[name] - self._last_paused[name] for name in paused}
        elapsed = now - self._last_time - sum(spent.values())
        rate = None
        if elapsed > 0:
            rate = (samples - self._last_samples) * trainer.world_size / elapsed
        self._last_time, self._last_samples, self._last_paused = now, samples, paused
        return rate, spent
