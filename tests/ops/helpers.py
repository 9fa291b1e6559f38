"""Helpers shared by the kernel tests."""

import subprocess
import sys
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


# After `setup`, in a fresh interpreter: whether a 16 MiB tensor lies in malloc's main
# heap ([heap] in /proc/self/maps) rather than a mapping of its own, and the page
# faults of `steps` steps (after 10 warm-up steps) that each allocate and free two
# 4 MiB tensors.
_STEP_BUFFERS_SCRIPT = """
import resource, torch
{setup}
def in_heap(t):
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            return lo <= t.data_ptr() < hi
    return False
big = torch.ones(4 << 20)
print(int(in_heap(big)))
del big
def step():
    bufs = [torch.ones(1 << 20) for _ in range(2)]
    return sum(float(b[-1]) for b in bufs)
for _ in range(10 if {steps} else 0):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({steps}):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

# 4 KiB pages in one 4 MiB buffer.
PAGES_PER_BUFFER = 1024


def step_buffers(setup: str, steps: int = 50) -> tuple[bool, int]:
    """Runs `setup` (Python source) in a fresh interpreter, then returns whether a
    16 MiB tensor is placed in malloc's main heap, and the page faults of `steps` steps
    that each allocate and free two 4 MiB tensors."""
    out = subprocess.run(
        [sys.executable, "-c", _STEP_BUFFERS_SCRIPT.format(setup=setup, steps=steps)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    in_heap, faults = out.stdout.split()[-2:]
    return in_heap == "1", int(faults)
