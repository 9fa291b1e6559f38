"""run_distributed: run a function on N real processes joined in a process group."""

from __future__ import annotations

import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recis.distributed.process_group import shutdown_distributed


class DistributedTestError(RuntimeError):
    """A rank raised, died or did not finish in time."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout: float,
    args: tuple,
    kwargs: dict,
    results: Any,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout)
        )
        value = fn(*args, **kwargs)
        # Plain pickle bytes: torch's queue reducers would pass tensors as shared memory
        # that vanishes when this process exits, before the parent reads it.
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        shutdown_distributed()


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout: float = 120.0,
    **kwargs: Any,
) -> list[Any]:
    """Runs ``fn(*args, **kwargs)`` on ``world_size`` spawned ranks; returns their results.

    Each rank joins a ``backend`` process group on a free local port (with the
    ``RANK``/``WORLD_SIZE``/``LOCAL_*`` variables torchrun would set), runs ``fn``
    and always destroys the group. ``fn`` and its arguments must be picklable
    (a module-level function). If any rank raises or dies, the others are stopped
    and :class:`DistributedTestError` carries that rank's traceback; if the ranks
    have not all finished after ``timeout`` seconds, the same error names the ranks
    still running.

    Example::

        >>> def total():
        ...     t = torch.ones(1) * dist.get_rank()
        ...     dist.all_reduce(t)
        ...     return t.item()
        >>> run_distributed(total, 3)
        [3.0, 3.0, 3.0]
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(fn, rank, world_size, port, backend, timeout, args, kwargs, results),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    values: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(values) < world_size:
            try:
                rank, ok, payload = results.get(timeout=0.2)
            except queue.Empty:
                for rank, p in enumerate(procs):
                    if rank not in values and p.exitcode not in (None, 0):
                        raise DistributedTestError(
                            f"rank {rank} died with exit code {p.exitcode}"
                        ) from None
                if time.monotonic() > deadline:
                    running = [r for r in range(world_size) if r not in values]
                    raise DistributedTestError(
                        f"ranks {running} did not finish within {timeout:.0f}s"
                    ) from None
                continue
            if not ok:
                raise DistributedTestError(f"rank {rank} failed:\n{payload}")
            values[rank] = pickle.loads(payload)
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        results.close()
    return [values[r] for r in range(world_size)]
