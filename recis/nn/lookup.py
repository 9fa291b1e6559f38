"""Pooled lookup of an EmbeddingTable whose backward records a SparseGrad."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from recis import ops
from recis.nn.table import EmbeddingTable, SparseGrad


class _PooledLookup(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        anchor: Tensor,
        table: EmbeddingTable,
        ids: Tensor,
        offsets: Tensor,
        per_sample_weights: Tensor | None,
        mean: bool,
    ) -> Tensor:
        ctx.table, ctx.mean = table, mean
        ctx.save_for_backward(ids, offsets, per_sample_weights)
        return ops.pooled_lookup(
            table.weight, ids, offsets, per_sample_weights, ops.MEAN if mean else ops.SUM
        )

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[None, ...]:
        ids, offsets, per_sample_weights = ctx.saved_tensors
        ctx.table.record_grad(
            SparseGrad(ids, offsets, per_sample_weights, grad_out.contiguous(), ctx.mean)
        )
        return (None,) * 6


def table_lookup(
    table: EmbeddingTable,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None = None,
    mean: bool = False,
) -> Tensor:
    """Pools ``table.weight`` rows per bag; backward records the gradient in ``table``.

    Ids are local row indices of ``table.weight`` (the caller validates them).
    """
    return _PooledLookup.apply(table.grad_anchor, table, ids, offsets, per_sample_weights, mean)
