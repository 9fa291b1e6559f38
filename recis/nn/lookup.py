"""Pooled lookups of EmbeddingTables whose backward records each table's SparseGrad."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from recis import ops
from recis.nn.table import EmbeddingTable, SparseGrad


@dataclass(frozen=True)
class Bags:
    """One table's bags for :func:`pool_tables`: ``num_features`` features of ``batch``
    bags each, feature-major (bag ``f * batch + b`` is feature ``f`` of sample ``b``)."""

    ids: Tensor
    offsets: Tensor
    per_sample_weights: Tensor | None = None
    mean: bool = False
    num_features: int = 1


class _PoolTables(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        anchor: Tensor,
        tables: Sequence[EmbeddingTable],
        bags: Sequence[Bags],
        batch: int,
    ) -> Tensor:
        dims = [t.weight.shape[1] for t in tables]
        dtype = tables[0].weight.dtype
        for t in tables[1:]:
            dtype = torch.promote_types(dtype, t.weight.dtype)
        width = sum(b.num_features * d for b, d in zip(bags, dims, strict=True))
        out = ops.empty_table((batch, width), dtype, tables[0].weight.device)
        ops.pooled_lookup_tables(
            [t.weight for t in tables], [b.ids for b in bags], [b.offsets for b in bags],
            [b.per_sample_weights for b in bags], [b.mean for b in bags],
            [b.num_features for b in bags], out,
        )  # fmt: skip
        ctx.tables, ctx.bags, ctx.dims, ctx.batch = tables, bags, dims, batch
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, ...]:
        col = 0
        for table, b, dim in zip(ctx.tables, ctx.bags, ctx.dims, strict=True):
            n = b.num_features
            block = grad[:, col : col + n * dim]
            # A one-feature table's gradient is read in place (the kernels take a row
            # stride); several features are regrouped feature-major, as the bags are.
            if n > 1:
                block = block.reshape(ctx.batch, n, dim).transpose(0, 1).reshape(n * ctx.batch, dim)
            table.record_grad(SparseGrad(b.ids, b.offsets, b.per_sample_weights, block, b.mean))
            col += n * dim
        return (None,) * 4


def pool_tables(tables: Sequence[EmbeddingTable], bags: Sequence[Bags], batch: int) -> Tensor:
    """Pools every table's bags into one ``[batch, sum(num_features * dim)]`` tensor:
    table blocks side by side in the given order, each table's features side by side.
    Backward records each table's :class:`SparseGrad`. Ids are local row indices of
    each ``table.weight`` (the caller validates them).

    Example::

        >>> out = pool_tables([t0, t1], [Bags(ids0, offsets0), Bags(ids1, offsets1)], batch=2)
    """
    if not tables:
        return torch.zeros(batch, 0)
    return _PoolTables.apply(tables[0].grad_anchor, list(tables), list(bags), batch)


def table_lookup(
    table: EmbeddingTable,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None = None,
    mean: bool = False,
) -> Tensor:
    """Pools ``table.weight`` rows per bag (``[num_bags, dim]``); backward records the
    gradient in ``table``.

    Ids are local row indices of ``table.weight`` (the caller validates them).
    """
    return pool_tables([table], [Bags(ids, offsets, per_sample_weights, mean)], offsets.numel() - 1)
