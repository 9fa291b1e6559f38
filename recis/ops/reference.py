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


def bucketize(
    ids: Tensor, lengths: Tensor, weights: Tensor | None, boundaries: Tensor
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Reference of :func:`recis.ops.bucketize`: one id at a time."""
    num_buckets, num_bags = boundaries.numel() - 1, lengths.numel()
    slots: list[list[list[int]]] = [[[] for _ in range(num_bags)] for _ in range(num_buckets)]
    pos = 0
    for b in range(num_bags):
        for _ in range(int(lengths[b])):
            v = int(ids[pos])
            k = max(i for i in range(num_buckets) if int(boundaries[i]) <= v)
            if v >= int(boundaries[-1]) or v < int(boundaries[0]):
                raise ValueError(f"id {v} outside the boundaries")
            slots[k][b].append(pos)
            pos += 1
    order = [j for k in range(num_buckets) for b in range(num_bags) for j in slots[k][b]]
    bucket_of = {j: k for k in range(num_buckets) for b in range(num_bags) for j in slots[k][b]}
    perm = torch.tensor(order, dtype=torch.int64)
    out_lengths = torch.tensor(
        [len(slots[k][b]) for k in range(num_buckets) for b in range(num_bags)],
        dtype=lengths.dtype,
    )
    out_ids = torch.tensor(
        [int(ids[j]) - int(boundaries[bucket_of[j]]) for j in order], dtype=ids.dtype
    )
    out_w = None if weights is None else weights[perm].float()
    return out_lengths, out_ids, out_w, perm
