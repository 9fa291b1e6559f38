"""Building the batch dict that models consume from parsed Criteo-shaped rows."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from recis.io.criteo import SPARSE_NAMES
from recis.sparse import KeyedJaggedTensor

Batch = dict[str, object]


def dense_transform(raw: Tensor) -> Tensor:
    """``log(1 + max(x, 0))`` of raw counts, as float32."""
    return torch.log1p(raw.double().clamp_min(0)).float()


def make_batch(labels: Tensor, dense: Tensor, sparse: KeyedJaggedTensor) -> Batch:
    """The batch format every recis model takes: ``{"dense", "sparse", "label"}``."""
    return {"dense": dense, "sparse": sparse, "label": labels}


def rows_to_batch(labels: np.ndarray, raw_dense: np.ndarray, ids: np.ndarray) -> Batch:
    """Batch of parsed rows: ``labels [B]``, raw counts ``[B, 13]``, ids ``[B, 26]`` (-1: none).

    Built in numpy (single-threaded, no intra-op thread pool to wake up) and handed to
    torch without copies; the KJT is valid by construction, so its checks are skipped.
    """
    batch = len(labels)
    key_major = np.ascontiguousarray(ids, dtype=np.int64).T.reshape(-1)
    present = key_major >= 0
    kjt = KeyedJaggedTensor(
        SPARSE_NAMES,
        torch.from_numpy(key_major[present]),
        torch.from_numpy(present.astype(np.int64)),
        stride=batch,
        _validate=False,
    )
    return make_batch(
        torch.from_numpy(np.asarray(labels, dtype=np.float32)),
        dense_transform(torch.from_numpy(np.asarray(raw_dense, dtype=np.float64))),
        kjt,
    )
