"""What the benchmarks read off the machine they run on, and the malloc policy they
share with the Trainer."""

from __future__ import annotations

import argparse
import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from recis.ops import keep_freed_host_memory


def memcpy_bandwidth(
    threads: int, mib: int = 1024, repeats: int = 5, allocations: int = 3
) -> float:
    """Bytes/s (read + write counted) of the C library's memcpy over a large host
    buffer, split over ``threads`` threads (numpy's ``copyto`` is a memcpy here and
    releases the GIL), the best of ``repeats`` in each of ``allocations`` pairs of
    buffers (a VM's pages need not all be equally fast: see ``kernels.copy_bandwidth``). A large memcpy writes with
    non-temporal stores, which do not first read the destination into cache as a
    tensor ``copy_`` does: this is the closer of the two to the memory's own limit."""
    cuts = np.linspace(0, mib * 2**20 // 4, threads + 1).astype(np.int64)
    spans = [slice(*span) for span in itertools.pairwise(cuts.tolist())]

    def best_copy(pool: ThreadPoolExecutor, src: np.ndarray, dst: np.ndarray) -> float:
        np.copyto(dst, src)
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda span: np.copyto(dst[span], src[span]), spans))
            seconds.append(time.perf_counter() - t0)
        return min(seconds)

    # Held together, so that each pair has pages of its own rather than the last one's.
    pairs = [
        (np.ones(mib * 2**20 // 4, dtype=np.float32), np.empty(mib * 2**20 // 4, dtype=np.float32))
        for _ in range(allocations)
    ]
    with ThreadPoolExecutor(threads) as pool:
        best = min(best_copy(pool, src, dst) for src, dst in pairs)
    return 2 * mib * 2**20 / best


def add_malloc_option(parser: argparse.ArgumentParser) -> None:
    """``--malloc_defaults``: see :func:`apply_malloc_option`."""
    parser.add_argument(
        "--malloc_defaults",
        action="store_true",
        help="leave malloc's policy as it is (by default recis.ops.keep_freed_host_memory() "
        "is called first, as the Trainer does; the setting is the process's, so every "
        "implementation in the job gets it)",
    )


def apply_malloc_option(args: argparse.Namespace) -> bool:
    """Calls ``keep_freed_host_memory()`` unless ``--malloc_defaults`` was given; returns
    whether malloc now keeps freed memory (False off glibc), for the results to record."""
    return not args.malloc_defaults and keep_freed_host_memory()
