"""Building the batch dict that models consume from parsed Criteo-shaped rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from recis.io.criteo import SPARSE_NAMES
from recis.sparse import KeyedJaggedTensor

Batch = dict[str, object]


def dense_transform(raw: Tensor) -> Tensor:
    """``log(1 + max(x, 0))`` of raw counts, as float32."""
    return torch.log1p(raw.double().clamp_min(0)).float()


def one_hot_kjt(ids: Tensor, keys: Sequence[str] = SPARSE_NAMES) -> KeyedJaggedTensor:
    """KJT of ``ids [B, F]`` with one id per bag, or an empty bag where the id is negative."""
    batch = ids.shape[0]
    key_major = ids.t().reshape(-1)  # KJT lengths/values are key-major
    present = key_major >= 0
    return KeyedJaggedTensor(
        list(keys), key_major[present].contiguous(), present.to(torch.int64), stride=batch
    )


def make_batch(labels: Tensor, dense: Tensor, sparse: KeyedJaggedTensor) -> Batch:
    """The batch format every recis model takes: ``{"dense", "sparse", "label"}``."""
    return {"dense": dense, "sparse": sparse, "label": labels}


def rows_to_batch(labels: list[float], raw_dense: list[list[float]], ids: list[list[int]]) -> Batch:
    """Batch of parsed rows (see :class:`recis.io.criteo.RecordParser`)."""
    return make_batch(
        torch.tensor(labels, dtype=torch.float32),
        dense_transform(torch.tensor(raw_dense, dtype=torch.float64)),
        one_hot_kjt(torch.tensor(ids, dtype=torch.int64)),
    )
