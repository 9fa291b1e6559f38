"""Pooled embedding lookups: one table (``recis::pooled_lookup``), or a batch of tables
into one output (``recis::pooled_lookup_tables``)."""

from __future__ import annotations

from collections.abc import Sequence

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


def pooled_lookup_tables(
    weights: Sequence[Tensor],
    ids: Sequence[Tensor],
    offsets: Sequence[Tensor],
    per_sample_weights: Sequence[Tensor | None],
    mean: Sequence[bool],
    features: Sequence[int],
    out: Tensor,
) -> Tensor:
    """Pools a batch of tables into ``out`` ``[B, sum(features[t] * dim_t)]`` in one call.

    Table ``t`` has ``features[t] * B`` bags, feature-major (bag ``f * B + b`` is feature
    ``f`` of sample ``b``, ``B = out.shape[0]``); its block of ``out`` follows the
    blocks of the tables before it, its features side by side. ``mean[t]`` selects mean
    pooling. ``out`` may have any row stride (contiguous columns). An id outside its
    table raises ``RuntimeError`` naming the table by its index (on CPU ``out`` may then
    be partly written). On CUDA one check of every table's ids precedes the lookups.

    Example::

        >>> w0, w1 = torch.arange(6.0).view(3, 2), torch.ones(2, 1)
        >>> out = torch.empty(2, 4)
        >>> pooled_lookup_tables([w0, w1], [torch.tensor([0, 2]), torch.tensor([0, 1, 1, 0])],
        ...                      [torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2, 3, 4])],
        ...                      [None, None], [False, False], [1, 2], out)
        tensor([[0., 1., 1., 1.],
                [4., 5., 1., 1.]])
    """
    torch.ops.recis.pooled_lookup_tables(
        list(weights), list(ids), list(offsets), list(per_sample_weights), list(mean),
        list(features), out,
    )  # fmt: skip
    return out
