"""Progress lines of long work: checkpoint reads and writes, evaluation, measuring data."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)

# A line at most this often (seconds): work shorter than this logs none.
PROGRESS_SECONDS = 10.0


class Progress:
    """Counts what threads did and logs a line at most every :data:`PROGRESS_SECONDS`:
    what, how much (of ``total`` when known), the rate. ``unit="bytes"`` is shown in
    GiB and MiB/s; any other unit as a count (``"batches"``, ``"files"``). With
    ``log=False`` it only counts: ranks about equally busy pass ``log=rank == 0``, so
    that one rank's lines tell the job's.

    Example::

        >>> progress = Progress("saving ckpt-600: rank 0", "written", total=8 << 30)
        >>> write_files(storage, tmp, "rank00000", items, 4, 1 << 20, progress.add)
        >>> # after 10 s of writing, and every 10 s on, a line such as
        >>> # saving ckpt-600: rank 0: 1.97 of 8.00 GiB written (24%, 202 MiB/s)
        >>> evaluating = Progress("evaluation at step 600", "evaluated", unit="batches")
        >>> evaluating.add(1)  # per batch; after 10 s a line such as
        >>> # evaluation at step 600: 1200 batches evaluated (118 batches/s)
    """

    def __init__(
        self,
        what: str,
        verb: str,
        total: int | None = None,
        unit: str = "bytes",
        log: bool = True,
    ) -> None:
        self.what, self.verb, self.total, self.unit = what, verb, total, unit
        self.log = log  # False: only counts (the ranks whose lines rank 0's already tell)
        self.done = 0
        self._start = self._last = time.monotonic()
        self._lock = threading.Lock()

    def expect(self, more: int) -> None:
        """Sets the total, once known: ``more`` beyond what is done by now (the rest
        that comes after it, if any, counts on past 100%)."""
        with self._lock:
            self.total = self.done + more

    def add(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            now = time.monotonic()
            if not self.log or now - self._last < PROGRESS_SECONDS:
                return
            self._last = now
            done, elapsed = self.done, max(now - self._start, 1e-9)
        total = None if self.total is None else max(self.total, done)
        share = "" if total is None else f"{100 * done // max(total, 1)}%, "
        if self.unit == "bytes":
            count, unit, rate = f"{done / 2**30:.2f}", "GiB", f"{done / 2**20 / elapsed:.0f} MiB/s"
            if total is not None:
                count += f" of {total / 2**30:.2f}"
        else:
            count, unit = f"{done}", self.unit
            rate = f"{done / elapsed:.{0 if done / elapsed >= 10 else 1}f} {unit}/s"
            if total is not None:
                count += f" of {total}"
        logger.info("%s: %s %s %s (%s%s)", self.what, count, unit, self.verb, share, rate)
