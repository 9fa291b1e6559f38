"""Helpers for tests of multi-process behaviour."""

from recis.testing.distributed import DistributedTestError, free_port, run_distributed

__all__ = ["DistributedTestError", "free_port", "run_distributed"]
