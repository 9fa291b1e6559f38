"""Trainer.evaluate's loop over the eval batches, what it accumulates and reduces
across ranks, and the zero-sample batch a rank runs once its eval data ended."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from recis.framework.metrics import BinaryClassificationMetric, Predictions
from recis.framework.rank_sync import deferred_iter
from recis.framework.trainer_checkpoints import has_read_position
from recis.sparse import KeyedJaggedTensor

if TYPE_CHECKING:
    from recis.framework.progress import Progress
    from recis.framework.rank_sync import RankSync


def without_samples(data: Any) -> Any:
    """``data`` cut to zero samples (tensors and KeyedJaggedTensors along the batch).

    Example::

        >>> without_samples({"label": torch.ones(4)})["label"].shape
        torch.Size([0])
    """
    if isinstance(data, dict):
        return {k: without_samples(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(without_samples(v) for v in data)
    if isinstance(data, KeyedJaggedTensor):
        w = data.weights_or_none()
        return KeyedJaggedTensor(
            data.keys(), data.values()[:0], data.lengths()[:0], None if w is None else w[:0]
        )
    if isinstance(data, Tensor) and data.dim() > 0:
        return data[:0]
    return data


@contextlib.contextmanager
def eval_iterator(dataset: Any) -> Iterator[Iterator[Any]]:
    """The batches of ``dataset`` from its read position, which is put back afterwards
    for a dataset that has one (``state_dict``/``load_state_dict``, as recis.io's), so
    that every evaluation starts at the same batch; the iteration is closed at the end.

    Example::

        >>> with eval_iterator(dataset) as it:
        ...     first = next(it)
    """
    position = dataset.state_dict() if has_read_position(dataset) else None
    it = deferred_iter(dataset)
    try:
        yield it
    finally:
        it.close()  # ends the dataset's iteration if it is a generator (its files)
        if position is not None:
            dataset.load_state_dict(position)


def check_eval_set_not_empty(dataset: Any, sync: RankSync, step: int) -> None:
    """Raises ``ValueError`` on every rank unless some rank's eval set has a batch
    (collective; each rank reads one batch, and its read position is put back)."""
    with eval_iterator(dataset) as it:
        _, any_left, _ = sync.next_batch(it, "evaluation", step)
    if not any_left:
        raise ValueError(f"{empty_eval_set(sync.world_size)}: there is nothing to evaluate")


def empty_eval_set(world_size: int) -> str:
    return "the eval set is empty" + (f" on all {world_size} ranks" if world_size > 1 else "")


def borrow_shape_where_empty(data: Any | None, sync: RankSync, step: int) -> Any:
    """``data`` (this rank's first eval batch), or on a rank whose eval data is empty
    another rank's first batch cut to zero samples: its model still has to take part
    in the others' collectives. Collective: one small all-reduce, and an all-gather of
    the zero-sample batches when some rank has none (``step``: for errors)."""
    (some_rank_has_none,), _ = sync.agree([data is None], False, step)
    if not some_rank_has_none:
        return data
    shapes = sync.gather_objects(None if data is None else without_samples(data))
    return data if data is not None else next(s for s in shapes if s is not None)


def is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.numel() == 1)


class EvalMetrics:
    """Every :class:`Predictions` metric a model reports, fed to a
    :class:`BinaryClassificationMetric`, and every scalar metric's sum and count.

    Example::

        >>> m = EvalMetrics()
        >>> m.add({"loss": 0.5, "auc": Predictions(torch.tensor([0.9]), torch.tensor([1.0]))})
        >>> m.add({"loss": 0.3})
        >>> m.reduce(world_size=1, device=torch.device("cpu"))["loss"]
        0.4
    """

    def __init__(self) -> None:
        self.predictions: dict[str, BinaryClassificationMetric] = {}
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, reported: dict[str, Any], count: bool = True) -> None:
        """Adds one batch's metrics; with ``count=False`` (a zero-sample batch) only
        registers their names, so that every rank reduces the same metrics."""
        for name, value in reported.items():
            if isinstance(value, Predictions):
                metric = self.predictions.setdefault(name, BinaryClassificationMetric())
                if count:
                    metric.update(*value)
            elif is_scalar(value):
                self.sums[name] = self.sums.get(name, 0.0) + (float(value) if count else 0.0)
                self.counts[name] = self.counts.get(name, 0) + int(count)

    def reduce(self, world_size: int, device: torch.device) -> dict[str, float]:
        """Across ranks (collective: every rank calls it with the same metric names):
        ``auc``, ``logloss`` and ``count`` of the ``"auc"`` predictions,
        ``name/auc`` ... of any other, and each scalar's mean over batches and ranks.
        Collective tensors go to ``device``."""
        results: dict[str, float] = {}
        for name in sorted(self.predictions):
            computed = self.predictions[name].compute()
            prefix = "" if name == "auc" else f"{name}/"
            for key in ("auc", "logloss", "count"):
                results[prefix + key] = computed[key]
        names = sorted(self.sums)
        if names:
            totals = torch.tensor(
                [v for n in names for v in (self.sums[n], self.counts[n])], dtype=torch.float64
            )
            if world_size > 1:
                totals = totals.to(device)
                dist.all_reduce(totals)
                totals = totals.cpu()
            for i, name in enumerate(names):
                results.setdefault(name, float(totals[2 * i] / totals[2 * i + 1]))
        return results


def run_eval_batches(
    it: Iterator[Any],
    sync: RankSync,
    eval_batch: Callable[[Any], dict[str, Any]],
    metrics: EvalMetrics,
    steps: int | None,
    step: int,
    stop: Callable[[], bool],
    progress: Progress | None = None,
) -> tuple[int, bool]:
    """Feeds ``eval_batch(batch)`` of each batch of ``it`` to ``metrics``, for
    ``steps`` batches or until every rank's data ended (``step``: the training step,
    for errors); returns the batches run and whether ``stop()`` on some rank cut the
    evaluation short. A rank whose data ended before the others' runs its last batch
    cut to zero samples, so that the model's collectives meet on every rank, and
    counts nothing from it; a rank whose eval data is empty runs zero-sample batches
    shaped like another rank's first batch. Raises ``ValueError`` on every rank when
    no rank has a batch."""
    done, data, ended = 0, None, False
    while steps is None or done < steps:
        batch, any_left, stopping = sync.next_batch(it, "evaluation", step, stop)
        if stopping:
            return done, True
        if not any_left:
            if done == 0:  # on every rank at once: nothing to report
                raise ValueError(empty_eval_set(sync.world_size))
            break
        if batch is not None:
            data = batch
        elif not ended:  # this rank's data ended (or was empty): zero samples from now on
            data, ended = without_samples(data), True
        if done == 0 and sync.world_size > 1:
            data = borrow_shape_where_empty(data, sync, step)
        try:
            metrics.add(eval_batch(data), count=not ended)
        except Exception as e:
            raise sync.fail(e, step) from e
        done += 1
        if progress is not None:
            progress.add(1)
    return done, False
