"""Shared helpers of the sparse-optimizer tests: tables, batches, a dense twin."""

from __future__ import annotations

import torch
from torch import Tensor

from recis.nn import EmbeddingBagConfig, EmbeddingTable, table_lookup


def make_table(
    name: str, rows: int, dim: int, dtype=torch.float64, pooling="sum"
) -> EmbeddingTable:
    cfg = EmbeddingBagConfig(name, rows, dim, [f"f_{name}"], pooling=pooling)
    return EmbeddingTable(cfg, torch.randn(rows, dim, dtype=dtype))


def random_batch(rows: int, num_bags: int, max_len: int, touch_all: bool, weighted: bool, dtype):
    """CSR bags of ids; with ``touch_all`` every row appears at least once."""
    lengths = torch.randint(0, max_len + 1, (num_bags,))
    ids = torch.randint(0, rows, (int(lengths.sum()),))
    if touch_all:
        extra = torch.randperm(rows)
        ids = torch.cat([ids, extra])
        lengths[-1] += rows
    offsets = torch.zeros(num_bags + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    # float32-representable: the pooled_lookup kernel reads weights as float32.
    psw = (torch.rand(ids.numel()) + 0.5).to(dtype) if weighted else None
    return ids, offsets, psw


def dense_pool(weight: Tensor, ids: Tensor, offsets: Tensor, psw: Tensor | None, mean: bool):
    """Differentiable pure-torch pooled lookup (the dense twin's forward)."""
    lengths = offsets[1:] - offsets[:-1]
    bag = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    rows = weight[ids]
    if psw is not None:
        rows = rows * psw[:, None]
    out = torch.zeros(lengths.numel(), weight.shape[1], dtype=weight.dtype).index_add(0, bag, rows)
    if mean:
        out = out / lengths.clamp(min=1)[:, None].to(weight.dtype)
    return out


def sparse_loss(table: EmbeddingTable, batch, target: Tensor, mean: bool) -> Tensor:
    ids, offsets, psw = batch
    out = table_lookup(table, ids, offsets, psw, mean)
    return ((out - target) ** 2).sum(dim=1).mean()


def dense_loss(weight: Tensor, batch, target: Tensor, mean: bool) -> Tensor:
    ids, offsets, psw = batch
    out = dense_pool(weight, ids, offsets, psw, mean)
    return ((out - target) ** 2).sum(dim=1).mean()
