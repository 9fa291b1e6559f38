"""RankSync: how the ranks of a job agree each step on the end of data and on failures."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from recis.distributed.comm import all_gather_objects
from recis.framework.progress import Progress

logger = logging.getLogger(__name__)

# How gloo reports a collective whose peer went away (a plain RuntimeError).
_PEER_GONE = "Connection closed by peer"
# gloo ("Timed out waiting 1800000ms for recv", then "Application timeout caused pair
# closure") and NCCL's watchdog ("Watchdog caught collective operation timeout").
_TIMED_OUT = ("Timed out waiting", "Application timeout", "collective operation timeout")


def deferred_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """``iter(iterable)`` called at the first ``next()``, so that an error there (a
    dataset opening its files) reaches the ranks' agreement on the batch like any
    read error, instead of leaving the other ranks waiting in it. ``close()`` closes
    the iterable's iterator, if it is a generator.

    Example::

        >>> it = deferred_iter(dataset)  # nothing is opened yet
        >>> batch, any_left, stop = sync.next_batch(it, "evaluation", step=0)
    """
    yield from iterable


def skip_batches(it: Iterator[Any], count: int, progress: Progress) -> Iterator[Any]:
    """``it`` without its first ``count`` batches, read and dropped at the first
    ``next()`` (so that a read error there reaches the ranks' agreement on the batch);
    ``progress`` counts them.

    Example::

        >>> it = skip_batches(deferred_iter(batches), 3, Progress("skip", "skipped"))
    """
    for _ in range(count):
        if next(it, _END) is _END:
            return
        progress.add(1)
    yield from it


_END = object()


class RankSync:
    """One small all-reduce per step keeps the ranks of a job in step.

    :meth:`next_window` reads this rank's next batches and tells every rank whether
    any of them ran out of data (all stop at the same step, so uneven data never
    hangs), asked to stop (on SIGTERM: all checkpoint at the same step) or failed to
    read it (all raise, the failing rank its own error, the others one naming it).
    :meth:`next_batch` goes on instead until every rank's data ended (evaluation
    covers every batch). :meth:`fail` handles an error raised inside a step, where
    the other ranks may wait in a collective of the model. :meth:`gather`,
    :meth:`gather_objects` and :meth:`check_same` compare values across ranks (the
    step of a NaN loss, the options every rank must share).

    Example::

        >>> sync = RankSync(dist.get_rank(), dist.get_world_size(), torch.device("cpu"))
        >>> window, stop = sync.next_window(iterator, k=2, what="training", step=0)
        >>> window is None, stop   # some rank has no 2 more batches; some rank got SIGTERM
        (False, False)
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        device: torch.device,
        before_leaving: Callable[[], None] | None = None,
    ) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.ran_out = False  # this rank's own data ended in the last next_window
        # What must end before fail() gives up the process group (a background save).
        self._before_leaving = before_leaving

    def comm_device(self) -> torch.device:
        """Where collective tensors live: the device under NCCL, CPU otherwise (and
        when there is no process group: one rank needs no collective)."""
        if self.world_size == 1 or not dist.is_initialized():
            return torch.device("cpu")
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def agree(
        self, flags: Sequence[bool], failed: bool, step: int
    ) -> tuple[list[bool], int | None]:
        """Across ranks: which of ``flags`` are set on any rank (e.g. "ran out of data"),
        and which rank (if any) failed?"""
        if self.world_size == 1:
            return list(flags), self.rank if failed else None
        values = [*(int(f) for f in flags), self.rank + 1 if failed else 0]
        reduced = torch.tensor(values, device=self.comm_device())
        try:
            dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
        except RuntimeError as e:
            raise self.fail(e, step, in_collective=True) from e
        *any_set, failed_plus_one = (int(v) for v in reduced.tolist())
        return [bool(v) for v in any_set], (failed_plus_one - 1 if failed_plus_one else None)

    def gather(self, value: int, step: int) -> list[int]:
        """``value`` of every rank, in rank order (one small all-gather)."""
        if self.world_size == 1:
            return [value]
        mine = torch.tensor([value], device=self.comm_device())
        values = [torch.zeros_like(mine) for _ in range(self.world_size)]
        try:
            dist.all_gather(values, mine)
        except RuntimeError as e:
            raise self.fail(e, step, in_collective=True) from e
        return [int(v.item()) for v in values]

    def gather_objects(self, mine: Any) -> list[Any]:
        """``mine`` (a picklable object) of every rank, in rank order."""
        return all_gather_objects(mine)

    def check_same(self, mine: dict[str, Any], hint: str) -> None:
        """Raises ``ValueError`` on every rank unless every rank has the same ``mine``
        (one all-gather of objects), naming the first entry that differs from rank
        0's, and ``hint``, a likely cause."""
        everyone = self.gather_objects(mine)
        for other, theirs in enumerate(everyone):
            differing = sorted(
                k for k in set(theirs) | set(mine) if theirs.get(k) != everyone[0].get(k)
            )
            if differing:
                name = differing[0]
                raise ValueError(
                    f"ranks differ in {name}: {theirs.get(name)!r} on rank {other} but "
                    f"{everyone[0].get(name)!r} on rank 0"
                    + (f" (and {differing[1:]})" if differing[1:] else "")
                    + f"; every rank must run the same code with the same options ({hint})"
                )

    def next_window(
        self,
        it: Iterator[Any],
        k: int,
        what: str,
        step: int,
        stop: Callable[[], bool] | None = None,
    ) -> tuple[list[Any] | None, bool]:
        """The next ``k`` batches of ``it``, or None when any rank ran out; and whether
        ``stop()``, asked once the window is read, is true on any rank (the caller
        stops after this window: its batches were read)."""
        batches: list[Any] = []
        exhausted, error = False, None
        try:
            for _ in range(k):
                batches.append(next(it))
        except StopIteration:
            exhausted = True  # a partial window is dropped: steps always see k micro-batches
        except Exception as e:
            error = e
        stopping = stop is not None and stop()
        self.ran_out = exhausted
        (any_exhausted, any_stop), failed_rank = self.agree(
            [exhausted, stopping], error is not None, step
        )
        self._raise_on_failure(error, failed_rank, what, step)
        return (None if any_exhausted else batches), any_stop

    def next_batch(
        self, it: Iterator[Any], what: str, step: int, stop: Callable[[], bool] | None = None
    ) -> tuple[Any | None, bool, bool]:
        """This rank's next batch of ``it`` (None once it ended), whether any rank still
        has one (the ranks go on until every rank's data ended), and whether ``stop()``
        is true on any rank."""
        batch, error = None, None
        try:
            batch = next(it)
        except StopIteration:
            pass
        except Exception as e:
            error = e
        stopping = stop is not None and stop()
        (any_left, any_stop), failed_rank = self.agree(
            [batch is not None, stopping], error is not None, step
        )
        self._raise_on_failure(error, failed_rank, what, step)
        return batch, any_left, any_stop

    def raise_if_any_failed(self, error: BaseException | None, what: str, step: int) -> None:
        """Raises on every rank when ``error`` is set on any (one small all-reduce): its
        own error on a failed rank, on the others one naming it (reading its ``what``
        data), so that no rank goes on into a collective the failed one never joins."""
        _, failed_rank = self.agree([], error is not None, step)
        self._raise_on_failure(error, failed_rank, what, step)

    def _raise_on_failure(
        self, error: BaseException | None, failed_rank: int | None, what: str, step: int
    ) -> None:
        if error is not None:
            raise error
        if failed_rank is not None:
            raise RuntimeError(
                f"rank {failed_rank} failed to read its {what} data at step {step}; "
                f"rank {self.rank} stops too (see rank {failed_rank}'s error)"
            )

    def fail(self, error: BaseException, step: int, in_collective: bool = False) -> BaseException:
        """After ``error`` inside a step: gives up the process group; returns what to raise.

        The other ranks may be waiting in a collective of the model, which no flag
        can reach: their collective fails when this process ends (as under
        torchrun) or lets go of the group. ``before_leaving`` runs first (the other
        ranks' background save needs this one's). A collective that failed because
        a peer left (gloo: "Connection closed by peer"; NCCL: a DistError) is
        reported as such, chained to the original error.
        """
        if self.world_size == 1 or not dist.is_initialized():
            return error
        logger.error(
            "rank %d failed at step %d (%s); destroying its process group: the other ranks' "
            "collectives fail once this process ends",
            self.rank,
            step,
            type(error).__name__,
        )
        if self._before_leaving is not None:
            self._before_leaving()
        dist.destroy_process_group()
        if any(sign in str(error) for sign in _TIMED_OUT):
            return RuntimeError(
                f"rank {self.rank}: a collective timed out at step {step}: another rank "
                "did not join it within the process group's timeout "
                "(TrainingArguments.ddp_timeout). That rank is slow (a long save, load or "
                "data read: raise ddp_timeout) or hung (see its log)"
            )
        if in_collective or isinstance(error, dist.DistError) or _PEER_GONE in str(error):
            return RuntimeError(
                f"rank {self.rank}: a collective failed at step {step}, most likely because "
                "another rank failed (see the first error in that rank's log)"
            )
        return error
