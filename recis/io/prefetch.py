"""Background prefetch: a producer thread filling a bounded queue."""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()

# Prefetchers still running: stopped at interpreter exit, before Python ends daemon
# threads mid-call (a producer inside a C++ reader then aborts the process).
_RUNNING: weakref.WeakSet[Prefetcher[Any]] = weakref.WeakSet()


@atexit.register
def _stop_running() -> None:
    for prefetcher in list(_RUNNING):
        prefetcher.close()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher(Iterator[T]):
    """Iterates ``source`` on a daemon thread, at most ``depth`` items ahead.

    An exception in ``source`` is re-raised in the consumer at the point it
    happened. :meth:`close` stops the thread (it closes ``source`` if that is a
    generator, so its files are released) and is idempotent.

    Example::

        >>> with Prefetcher(iter(range(3)), depth=2) as p:
        ...     list(p)
        [0, 1, 2]
    """

    def __init__(self, source: Iterator[T], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._run, args=(source,), name="recis-prefetch", daemon=True
        )
        self._thread.start()
        _RUNNING.add(self)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:
            self._put(_Failure(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.exc
        return item

    def close(self) -> None:
        """Stops the producer and waits for its thread to end."""
        self._done = True
        self._stop.set()
        # Drain so that a producer blocked on a full queue sees the stop promptly.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)
        _RUNNING.discard(self)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefetch(source: Iterator[T], depth: int) -> Iterator[T]:
    """``source`` read ``depth`` items ahead on a thread (``depth <= 0``: no thread).

    The thread is stopped when the returned generator is exhausted, closed or
    garbage collected.
    """
    if depth <= 0:
        yield from source
        return
    p = Prefetcher(source, depth)
    try:
        yield from p
    finally:
        p.close()
