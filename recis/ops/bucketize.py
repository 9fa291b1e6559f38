"""Row bucketization for row-wise sharding (the ``recis::bucketize`` kernel)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

import recis  # noqa: F401  (loads the kernels)


class Buckets(NamedTuple):
    """Ids split by owning row block; see :func:`bucketize`."""

    lengths: Tensor  # [num_buckets * num_bags], bucket-major
    ids: Tensor  # local to the owning bucket; bucket, bag, original order
    weights: Tensor | None
    permutation: Tensor  # ids[permutation[j]] is the global id of bucket ids[j]


def bucketize(ids: Tensor, lengths: Tensor, weights: Tensor | None, boundaries: Tensor) -> Buckets:
    """Routes each id of each bag to the row block that owns it.

    Bucket ``k`` owns global rows ``[boundaries[k], boundaries[k+1])``; its ids are
    made local (``id - boundaries[k]``). Within a bucket, bags keep their order and
    so do the ids within a bag. ``permutation`` undoes the reordering:
    ``ids[permutation]`` equals the global ids in bucket order. An id outside
    ``[boundaries[0], boundaries[-1])`` raises ``ValueError`` naming it and its position.

    Example::

        >>> b = bucketize(torch.tensor([5, 1, 7, 2]), torch.tensor([3, 1]), None,
        ...               torch.tensor([0, 4, 8]))
        >>> b.lengths, b.ids, b.permutation
        (tensor([1, 1, 2, 0]), tensor([1, 2, 1, 3]), tensor([1, 3, 0, 2]))
    """
    if boundaries.dtype != torch.int64:
        boundaries = boundaries.to(torch.int64)
    out_lengths, out_ids, out_w, perm = torch.ops.recis.bucketize(ids, lengths, weights, boundaries)
    return Buckets(out_lengths, out_ids, out_w if weights is not None else None, perm)
