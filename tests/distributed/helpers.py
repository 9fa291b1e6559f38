"""Shared pieces of the sharding tests: tables, batches, a tiny model and a reference
SGD step applied straight from SparseGrad records."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingTable, SparseGrad
from recis.ops import MEAN, SUM
from recis.ops.reference import bag_row_grads
from recis.sparse import KeyedJaggedTensor


def configs() -> list[EmbeddingBagConfig]:
    # Row counts not divisible by 2, 3 or 4; dims multiples of 4 (column_wise).
    return [
        EmbeddingBagConfig("t_sum", 11, 8, ["f_a", "f_b"], pooling="sum"),
        EmbeddingBagConfig("t_mean", 13, 12, ["f_c"], pooling="mean"),
        EmbeddingBagConfig("t_small", 5, 8, ["f_d"], pooling="sum"),
        EmbeddingBagConfig("t_wide", 9, 16, ["f_e"], pooling="mean"),
    ]


FEATURES = ["f_a", "f_b", "f_c", "f_d", "f_e"]
ROWS = {"f_a": 11, "f_b": 11, "f_c": 13, "f_d": 5, "f_e": 9}


def make_batch(
    batch: int, seed: int, weighted: bool = False, empty: tuple[str, ...] = ()
) -> KeyedJaggedTensor:
    """A random batch (bags of 0-3 ids, duplicates likely); features in ``empty`` get no ids."""
    g = torch.Generator().manual_seed(seed)
    lengths, values = [], []
    for f in FEATURES:
        ln = torch.randint(0, 4, (batch,), generator=g)
        if f in empty:
            ln.zero_()
        lengths.append(ln)
        values.append(torch.randint(0, ROWS[f], (int(ln.sum()),), generator=g))
    values_t = torch.cat(values)
    weights = torch.rand(values_t.numel(), generator=g) + 0.5 if weighted else None
    return KeyedJaggedTensor(FEATURES, values_t, torch.cat(lengths), weights)


def slice_batch(kjt: KeyedJaggedTensor, start: int, stop: int) -> KeyedJaggedTensor:
    """Samples ``[start, stop)`` of every feature."""
    parts = []
    for f in kjt.keys():  # noqa: SIM118 (a KJT is not iterable)
        jt = kjt[f]
        offs = jt.offsets()
        lo, hi = int(offs[start]), int(offs[stop])
        w = jt.weights_or_none()
        parts.append(
            (jt.values()[lo:hi], jt.lengths()[start:stop], None if w is None else w[lo:hi])
        )
    weighted = kjt.weights_or_none() is not None
    return KeyedJaggedTensor(
        kjt.keys(),
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]) if weighted else None,
    )


class TinyModel(nn.Module):
    """Embeddings -> linear -> squared error, mean over the batch."""

    def __init__(self, device: str | None = None) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(configs(), device=device)
        self.head = nn.Linear(sum(c.embedding_dim * len(c.feature_names) for c in configs()), 1)

    def forward(self, kjt: KeyedJaggedTensor, label: torch.Tensor) -> torch.Tensor:
        x = self.ebc(kjt).values()
        return ((self.head(torch.tanh(x)).squeeze(1) - label) ** 2).mean()


def sgd_from_sparse_grads(tables: dict[str, EmbeddingTable], lr: float) -> None:
    """Plain SGD on each table from its SparseGrad records (via the reference dense grad)."""
    for table in tables.values():
        g = table.sparse_grad()
        if g is None:
            continue
        grad = bag_row_grads(
            g.ids,
            g.offsets,
            g.per_sample_weights,
            MEAN if g.mean else SUM,
            g.grad_out,
            table.weight.shape[0],
        )
        table.weight.sub_(lr * grad)
        table.zero_grad()


def dense_grad(g: SparseGrad | None, like: torch.Tensor) -> torch.Tensor:
    """Dense gradient of a SparseGrad record (vectorised; the reference kernel is
    ``recis.ops.reference.bag_row_grads``, one id at a time)."""
    out = torch.zeros(like.shape, dtype=torch.float64)
    if g is None or g.ids.numel() == 0:
        return out.to(like.dtype)
    lengths = g.offsets[1:] - g.offsets[:-1]
    bag = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    scale = torch.ones(g.ids.numel(), dtype=torch.float64)
    if g.per_sample_weights is not None:
        scale = scale * g.per_sample_weights.double()
    if g.mean:
        scale = scale / lengths.clamp(min=1).double()[bag]
    out.index_add_(0, g.ids.long(), g.grad_out.double()[bag] * scale[:, None])
    return out.to(like.dtype)


def global_table(table: EmbeddingTable | None, rows: int, cols: int, group=None) -> torch.Tensor:
    """The whole table assembled from every rank's shard (``None``: no shard here).
    Every rank must call it, in the same table order."""
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    if table is None:
        table = EmbeddingTable(configs()[0], torch.zeros(0, 0))
    meta = torch.tensor(
        [table.row_offset, table.weight.shape[0], table.col_offset, table.weight.shape[1]]
    )
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta, group=group)
    pad = torch.zeros(rows * cols)
    pad[: table.weight.numel()] = table.weight.reshape(-1)
    if not dist.is_initialized():
        return pad.view(rows, cols)
    pieces = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(pieces, pad, group=group)
    full = torch.full((rows, cols), float("nan"))
    for (r0, nr, c0, nc), piece in zip(metas, pieces, strict=True):
        r0, nr, c0, nc = int(r0), int(nr), int(c0), int(nc)
        if nr * nc == 0:
            continue
        full[r0 : r0 + nr, c0 : c0 + nc] = piece[: nr * nc].view(nr, nc)
    return full
