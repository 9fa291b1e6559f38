"""Pure-torch references of the csrc kernels. Slow and obviously correct."""

from __future__ import annotations

import torch
from torch import Tensor

from recis.ops.pooled_lookup import MEAN


def pooled_lookup(
    weight: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None = None,
    pooling: int = 0,
) -> Tensor:
    """Reference of :func:`recis.ops.pooled_lookup`: one bag at a time."""
    num_bags = offsets.numel() - 1
    out = torch.zeros(num_bags, weight.shape[1], dtype=torch.float64)
    for b in range(num_bags):
        start, stop = int(offsets[b]), int(offsets[b + 1])
        for j in range(start, stop):
            w = 1.0 if per_sample_weights is None else float(per_sample_weights[j])
            out[b] += w * weight[int(ids[j])].double()
        if pooling == MEAN and stop > start:
            out[b] /= stop - start
    return out.to(weight.dtype)


def bag_row_grads(
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    pooling: int,
    grad_out: Tensor,
    num_rows: int,
) -> Tensor:
    """Dense ``[num_rows, dim]`` gradient of a pooled lookup given ``grad_out``."""
    grad = torch.zeros(num_rows, grad_out.shape[1], dtype=torch.float64)
    for b in range(offsets.numel() - 1):
        start, stop = int(offsets[b]), int(offsets[b + 1])
        scale = 1.0 / (stop - start) if pooling == MEAN and stop > start else 1.0
        for j in range(start, stop):
            w = 1.0 if per_sample_weights is None else float(per_sample_weights[j])
            grad[int(ids[j])] += w * scale * grad_out[b].double()
    return grad.to(grad_out.dtype)
