"""Metrics a model reports during a step, and an exact binary-classification metric.

Models call :func:`add_metric` inside ``forward``; the Trainer clears the registry at
the start of every step (:func:`clear_metrics`) and reads it after the step
(:func:`get_global_metrics`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

_METRICS: dict[str, object] = {}


class Predictions(NamedTuple):
    """Predicted probabilities in ``[0, 1]`` and their 0/1 labels (any shapes, same numel)."""

    preds: Tensor
    labels: Tensor


def _flat(value: Predictions, name: str) -> Predictions:
    preds = torch.as_tensor(value.preds).detach().reshape(-1)
    labels = torch.as_tensor(value.labels).detach().reshape(-1)
    if preds.numel() != labels.numel():
        raise ValueError(
            f"metric {name!r}: {preds.numel()} predictions but {labels.numel()} labels"
        )
    return Predictions(preds, labels.to(preds.dtype))


def add_metric(name: str, value: object) -> None:
    """Reports ``value`` under ``name`` for the current step.

    ``value`` is a scalar (Tensor with one element, float or int) or a
    :class:`Predictions`. A later scalar under the same name replaces the earlier
    one; later Predictions are appended to the earlier ones.

    Example::

        >>> add_metric("loss", loss.detach())
        >>> add_metric("auc", Predictions(torch.sigmoid(logits).detach(), labels))
    """
    if isinstance(value, Predictions):
        value = _flat(value, name)
        prev = _METRICS.get(name)
        if isinstance(prev, Predictions):
            value = Predictions(
                torch.cat([prev.preds, value.preds]), torch.cat([prev.labels, value.labels])
            )
    elif isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r} must be a scalar, got shape {tuple(value.shape)}")
        value = value.detach().reshape(())
    elif not isinstance(value, (int, float)):
        raise TypeError(
            f"metric {name!r}: expected a scalar or Predictions, got {type(value).__name__}"
        )
    _METRICS[name] = value


def get_global_metrics() -> dict[str, object]:
    """Everything reported with :func:`add_metric` since the last :func:`clear_metrics`."""
    return dict(_METRICS)


def clear_metrics() -> None:
    """Forgets every reported metric (the Trainer calls this at the start of each step)."""
    _METRICS.clear()


def _comm_device() -> torch.device:
    # NCCL moves only CUDA tensors; every other backend takes CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_cat(x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """Concatenation of every rank's 1-D ``x`` (sizes may differ), in rank order."""
    device = _comm_device()
    world = dist.get_world_size(group)
    size = torch.tensor([x.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s) for s in sizes]
    padded = torch.zeros(max(counts), dtype=x.dtype, device=device)
    padded[: x.numel()] = x.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)]).cpu()


def binary_auc(preds: Tensor, labels: Tensor) -> float:
    """Exact ROC AUC (tied scores count one half); NaN when one class is absent."""
    preds, labels = preds.double(), labels.double()
    positives = float(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return math.nan
    # Mann-Whitney U with average ranks for ties.
    _, inverse, counts = torch.unique(preds, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2
    rank_sum = float((avg_rank[inverse] * labels).sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


class BinaryClassificationMetric:
    """AUC and log loss over every prediction it was given, exact across ranks.

    Keeps all predictions (memory grows with the evaluated set) so that the AUC is
    exact, not bucketed.

    Example::

        >>> m = BinaryClassificationMetric()
        >>> m.update(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0]))
        >>> m.compute()["auc"]
        1.0
    """

    EPS = 1e-7

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._preds: list[Tensor] = []
        self._labels: list[Tensor] = []

    def update(self, preds: Tensor, labels: Tensor) -> None:
        p = _flat(Predictions(preds, labels), "BinaryClassificationMetric")
        self._preds.append(p.preds.double().cpu())
        self._labels.append(p.labels.double().cpu())

    def compute(self, process_group: dist.ProcessGroup | None = None) -> dict[str, object]:
        """``{"auc", "logloss", "count"}`` over all ranks when a process group exists."""
        preds = torch.cat(self._preds) if self._preds else torch.zeros(0, dtype=torch.float64)
        labels = torch.cat(self._labels) if self._labels else torch.zeros(0, dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            preds = _all_gather_cat(preds, process_group)
            labels = _all_gather_cat(labels, process_group)
        count = preds.numel()
        if count == 0:
            return {"auc": math.nan, "logloss": math.nan, "count": 0}
        p = preds.clamp(self.EPS, 1 - self.EPS)
        logloss = float(-(labels * p.log() + (1 - labels) * (1 - p).log()).mean())
        return {"auc": binary_auc(preds, labels), "logloss": logloss, "count": count}
