"""Training hooks: callbacks the Trainer calls around training, steps and evaluation."""

from recis.hooks.hook import Hook
from recis.hooks.logger_hook import LoggerHook
from recis.hooks.profiler_hook import ProfilerHook
from recis.hooks.tensorboard_hook import TensorBoardHook

__all__ = ["Hook", "LoggerHook", "ProfilerHook", "TensorBoardHook"]
