"""Progress lines of long checkpoint reads and writes."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)

# A line at most this often (seconds): work shorter than this logs none.
PROGRESS_SECONDS = 10.0


class Progress:
    """Counts the bytes that threads read or wrote and logs a line at most every
    :data:`PROGRESS_SECONDS`: what, how many bytes (of ``total`` when known), the rate.

    Example::

        >>> progress = Progress("saving ckpt-600: rank 0", "written", total=8 << 30)
        >>> write_files(storage, tmp, "rank00000", items, 4, 1 << 20, progress.add)
        >>> # after 10 s of writing, and every 10 s on, a line such as
        >>> # saving ckpt-600: rank 0: 1.97 of 8.00 GiB written (24%, 202 MiB/s)
    """

    def __init__(self, what: str, verb: str, total: int | None = None) -> None:
        self.what, self.verb, self.total = what, verb, total
        self.done = 0
        self._start = self._last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            now = time.monotonic()
            if now - self._last < PROGRESS_SECONDS:
                return
            self._last = now
            done, elapsed = self.done, now - self._start
        amount = f"{done / 2**30:.2f}"
        share = ""
        if self.total is not None:
            amount += f" of {self.total / 2**30:.2f}"
            share = f"{100 * done // max(self.total, 1)}%, "
        rate = done / 2**20 / max(elapsed, 1e-9)
        logger.info("%s: %s GiB %s (%s%.0f MiB/s)", self.what, amount, self.verb, share, rate)
