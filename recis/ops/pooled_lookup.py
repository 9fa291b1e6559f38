"""Pooled embedding lookup of one table (the ``recis::pooled_lookup`` kernel)."""

from __future__ import annotations

import torch
from torch import Tensor

import recis  # noqa: F401  (loads the kernels)

SUM = 0
MEAN = 1


def pooled_lookup(
    weight: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None = None,
    pooling: int = SUM,
    out: Tensor | None = None,
) -> Tensor:
    """Pools the rows of ``weight`` named by each bag of ``ids``.

    ``offsets`` (``num_bags + 1`` entries, CSR) delimits the bags; ``pooling`` is
    :data:`SUM` or :data:`MEAN` (an empty bag pools to zeros). Returns
    ``[num_bags, dim]``, written into ``out`` when given (any row stride, contiguous
    columns: e.g. a column block of a collection's output). An id outside the table
    raises ``RuntimeError`` naming it (``out`` may then be partly written). No autograd:
    the embedding modules record gradients themselves (see
    :class:`recis.nn.EmbeddingTable`).

    Example::

        >>> w = torch.arange(6.0).view(3, 2)
        >>> pooled_lookup(w, torch.tensor([0, 2, 2]), torch.tensor([0, 1, 3]))
        tensor([[ 0.,  1.],
                [ 8., 10.]])
    """
    if out is None:
        return torch.ops.recis.pooled_lookup(weight, ids, offsets, per_sample_weights, pooling)
    torch.ops.recis.pooled_lookup_into(weight, ids, offsets, per_sample_weights, pooling, out)
    return out
