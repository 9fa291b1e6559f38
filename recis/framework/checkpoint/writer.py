"""Writes one rank's tensors into files with parallel writer threads.

The tensors are packed into ``min(concurrency, #tensors)`` files of about equal
size (largest first, each into the emptiest file), and each file is written by its
own thread. File I/O, ``fsync`` and CRC-32 all release the GIL, so the threads
overlap for real. A rank with no tensors writes no file.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from typing import Any

from torch import Tensor

from recis.framework.checkpoint.storage import Storage
from recis.framework.checkpoint.tensor_file import write_tensor_file


def pack(items: dict[str, Tensor], num_files: int) -> list[list[str]]:
    """Keys of ``items`` split into ``num_files`` groups of about equal byte size."""
    bins: list[list[str]] = [[] for _ in range(num_files)]
    heap = [(0, i) for i in range(num_files)]
    for key in sorted(items, key=lambda k: -items[k].numel() * items[k].element_size()):
        size, i = heapq.heappop(heap)
        bins[i].append(key)
        heapq.heappush(heap, (size + items[key].numel() * items[key].element_size(), i))
    return [b for b in bins if b]


def write_files(
    storage: Storage,
    directory: str,
    prefix: str,
    items: dict[str, Tensor],
    concurrency: int,
    block_size: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Writes ``items`` (unique key → tensor) under ``directory`` as
    ``<prefix>-<i>.safetensors``; ``progress(nbytes)`` (from any writer thread) after
    each slice of a tensor is written.

    Returns ``(location, files)``: the file name holding each key, and each file's
    record (size, checksums) for the manifest.

    Example::

        >>> loc, files = write_files(LocalStorage(), "/tmp/ck", "rank00000", {"w": w}, 4, 1 << 20)
        >>> loc
        {'w': 'rank00000-0.safetensors'}
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not items:
        return {}, {}
    groups = pack(items, min(concurrency, len(items)))
    names = [f"{prefix}-{i}.safetensors" for i in range(len(groups))]

    def write(i: int) -> dict[str, Any]:
        path = storage.join(directory, names[i])
        tensors = [(k, items[k]) for k in groups[i]]
        return write_tensor_file(storage, path, tensors, block_size, progress)

    records = map_in_threads(write, len(groups), "recis-ckpt-write")
    location = {k: names[i] for i, group in enumerate(groups) for k in group}
    return location, dict(zip(names, records, strict=True))


def map_in_threads(fn: Callable[[int], Any], count: int, name: str) -> list[Any]:
    """``[fn(0), ..., fn(count - 1)]``, each call on a thread of its own (the first
    in this one); raises the error of the lowest ``i`` that failed, once all ended.

    Plain threads, not a ``ThreadPoolExecutor``: a background save can still be
    writing when the main thread has ended, and executors take no work from then on
    (the interpreter still joins threads started then).

    Example::

        >>> map_in_threads(lambda i: i * i, 3, "squares")
        [0, 1, 4]
    """
    results: list[Any] = [None] * count
    errors: list[BaseException | None] = [None] * count

    def run(i: int) -> None:
        try:
            results[i] = fn(i)
        except BaseException as e:
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,), name=f"{name}-{i}") for i in range(1, count)]
    for thread in threads:
        thread.start()
    run(0)
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
    return results
