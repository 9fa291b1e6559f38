"""StopSignal: SIGTERM asks the Trainer to checkpoint and stop, instead of killing it."""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Any


class StopSignal:
    """While entered, ``signum`` (SIGTERM) sets :attr:`requested` instead of ending the
    process, however often it comes; on exit the flag is cleared and the previous
    handler is back.

    Schedulers and launchers send SIGTERM before they kill: Slurm at preemption or the
    time limit, Kubernetes when it evicts a pod, torchrun to its workers when it is
    itself stopped. The Trainer checks the flag at each step, so a job can save a
    checkpoint and stop within their grace period (SIGKILL ends it after that). A
    worker may get SIGTERM twice (Slurm signals every process of a job step, and
    torchrun passes its own on), so a repeat does not end the process either. A
    handler can only be installed from the main thread; elsewhere the signal keeps
    its action and the flag stays unset.

    Example::

        >>> with StopSignal() as stop:
        ...     while not stop.requested:
        ...         train_one_step()
    """

    def __init__(self, signum: signal.Signals = signal.SIGTERM) -> None:
        self.signum = signum
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> StopSignal:
        self.requested = False
        try:
            self._previous = signal.signal(self.signum, self._handle)
            self._installed = True
        except ValueError:  # not the main thread
            self._installed = False
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True  # only a flag: the handler runs between any two bytecodes

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.requested = False  # outside, nothing acts on it
        if self._installed:
            signal.signal(self.signum, self._previous)
            self._installed = False
