"""ProfilerHook: a torch.profiler trace of a window of training steps."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from recis.hooks.hook import Hook


class ProfilerHook(Hook):
    """Profiles optimizer steps ``start_step + 1 .. start_step + num_steps`` on every rank.

    Each rank writes a Chrome trace (open in Perfetto or ``chrome://tracing``) to
    ``<output_dir>/trace_rank<r>_steps<a>-<b>.json``; CUDA activity is recorded too
    when a GPU is present. Skipping the first steps keeps one-time set-up out of
    the trace. If training ends inside the window, the partial trace is written.

    Example::

        >>> trainer.add_hook(ProfilerHook("prof", start_step=10, num_steps=3))
    """

    def __init__(
        self,
        output_dir: str,
        start_step: int = 1,
        num_steps: int = 3,
        record_shapes: bool = False,
        with_stack: bool = False,
    ) -> None:
        if start_step < 0 or num_steps < 1:
            raise ValueError(
                f"need start_step >= 0 and num_steps >= 1, got {start_step} and {num_steps}"
            )
        self.output_dir = output_dir
        self.start_step = start_step
        self.num_steps = num_steps
        self.record_shapes = record_shapes
        self.with_stack = with_stack
        self._profiler: profile | None = None
        self._first = 0
        self.trace_paths: list[str] = []

    def before_step(self, global_step: int) -> None:
        if self._profiler is None and global_step == self.start_step:
            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(ProfilerActivity.CUDA)
            self._profiler = profile(
                activities=activities,
                record_shapes=self.record_shapes,
                with_stack=self.with_stack,
            )
            self._first = global_step + 1
            self._profiler.start()

    def after_step(self, metrics: dict[str, Any], global_step: int) -> None:
        if self._profiler is not None and global_step >= self.start_step + self.num_steps:
            self._finish(global_step)

    def _finish(self, last_step: int) -> None:
        prof, self._profiler = self._profiler, None
        prof.stop()
        os.makedirs(self.output_dir, exist_ok=True)
        rank = self.trainer.rank if self.trainer is not None else 0
        path = os.path.join(
            self.output_dir, f"trace_rank{rank}_steps{self._first}-{last_step}.json"
        )
        prof.export_chrome_trace(path)
        self.trace_paths.append(path)

    def end(self) -> None:
        if self._profiler is not None:
            last = self.trainer.state.global_step if self.trainer is not None else self._first
            self._finish(last)
