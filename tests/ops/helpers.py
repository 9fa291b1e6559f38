"""Helpers shared by the kernel tests."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Runs the block with `n` torch threads, then restores the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def l2_prefetch_threshold(nbytes: int) -> Iterator[None]:
    """Runs the block with the sparse updates' L2-prefetch threshold at `nbytes` (0: the
    rows are always prefetched into L2), then restores it."""
    before = torch.ops.recis.l2_prefetch_threshold()
    torch.ops.recis.l2_prefetch_threshold(nbytes)
    try:
        yield
    finally:
        torch.ops.recis.l2_prefetch_threshold(before)
