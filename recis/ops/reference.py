"""Pure-torch references of the csrc kernels. Slow and obviously correct."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from recis.ops.pooled_lookup import MEAN
from recis.ops.route import Routes, RoutingPlan


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


def pooled_lookup_tables(
    weights: Sequence[Tensor],
    ids: Sequence[Tensor],
    offsets: Sequence[Tensor],
    per_sample_weights: Sequence[Tensor | None],
    mean: Sequence[bool],
    features: Sequence[int],
    out: Tensor,
) -> Tensor:
    """Reference of :func:`recis.ops.pooled_lookup_tables`: table by table, feature by
    feature, into out's columns."""
    batch, col = out.shape[0], 0
    for w, i, o, psw, m, n in zip(weights, ids, offsets, per_sample_weights, mean, features,
                                  strict=True):  # fmt: skip
        pooled = pooled_lookup(w, i, o, psw, MEAN if m else 0)
        dim = w.shape[1]
        for f in range(n):
            out[:, col : col + dim] = pooled[f * batch : (f + 1) * batch]
            col += dim
    return out


def _touched_grads(
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    grad_out: Tensor,
    mean: bool,
    num_rows: int,
) -> tuple[Tensor, Tensor]:
    """Sorted unique ids and their float64 gradients, via the dense reference gradient."""
    pooling = MEAN if mean else 0
    dense = bag_row_grads(ids, offsets, per_sample_weights, pooling, grad_out.double(), num_rows)
    touched = torch.unique(ids.long()) if ids.numel() else ids.new_zeros(0, dtype=torch.long)
    return touched, dense[touched]


def unique_row_grads(
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    grad_out: Tensor,
    mean: bool,
    num_rows: int,
) -> tuple[Tensor, Tensor]:
    """Reference of :func:`recis.ops.unique_row_grads`."""
    touched, grads = _touched_grads(ids, offsets, per_sample_weights, grad_out, mean, num_rows)
    return touched, grads.to(grad_out.dtype)


def _sgd_table(
    weight: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    grad_out: Tensor,
    mean: bool,
    lr: float,
    weight_decay: float = 0.0,
) -> None:
    """One table of :func:`sparse_sgd_update` (float64 math on touched rows)."""
    rows, g = _touched_grads(ids, offsets, per_sample_weights, grad_out, mean, weight.shape[0])
    w = weight[rows].double()
    weight[rows] = (w - lr * (g + weight_decay * w)).to(weight.dtype)


def _adagrad_table(
    weight: Tensor,
    state_sum: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    grad_out: Tensor,
    mean: bool,
    lr: float,
    eps: float,
    weight_decay: float = 0.0,
) -> None:
    """One table of :func:`sparse_adagrad_update`."""
    rows, g = _touched_grads(ids, offsets, per_sample_weights, grad_out, mean, weight.shape[0])
    w = weight[rows].double()
    g = g + weight_decay * w
    s = state_sum[rows].double() + g * g
    state_sum[rows] = s.to(state_sum.dtype)
    weight[rows] = (w - lr * g / (s.sqrt() + eps)).to(weight.dtype)


def _rowwise_adagrad_table(
    weight: Tensor,
    state_sum: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    grad_out: Tensor,
    mean: bool,
    lr: float,
    eps: float,
    weight_decay: float = 0.0,
) -> None:
    """One table of :func:`sparse_rowwise_adagrad_update`."""
    rows, g = _touched_grads(ids, offsets, per_sample_weights, grad_out, mean, weight.shape[0])
    w = weight[rows].double()
    g = g + weight_decay * w
    s = state_sum[rows].double() + (g * g).mean(dim=1)
    state_sum[rows] = s.to(state_sum.dtype)
    weight[rows] = (w - lr * g / (s.sqrt() + eps)[:, None]).to(weight.dtype)


def _adam_table(
    weight: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    grad_out: Tensor,
    mean: bool,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
) -> None:
    """One table of :func:`sparse_adam_update` (torch.optim.Adam(W) math)."""
    rows, g = _touched_grads(ids, offsets, per_sample_weights, grad_out, mean, weight.shape[0])
    w = weight[rows].double()
    if decoupled_weight_decay:
        w = w * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * w
    m = beta1 * exp_avg[rows].double() + (1 - beta1) * g
    v = beta2 * exp_avg_sq[rows].double() + (1 - beta2) * g * g
    denom = v.sqrt() / math.sqrt(1 - beta2**step) + eps
    exp_avg[rows] = m.to(exp_avg.dtype)
    exp_avg_sq[rows] = v.to(exp_avg_sq.dtype)
    weight[rows] = (w - lr / (1 - beta1**step) * m / denom).to(weight.dtype)


def _table_by_table(update_table: Callable[..., None], lists: list[Sequence], *hyper) -> None:
    """Calls ``update_table(*table_t, *hyper)`` for each table ``t`` of the per-table lists.
    A table of width 0 has nothing to update, its state included (row-wise Adagrad's
    mean of no squares would be NaN)."""
    for table in zip(*lists, strict=True):
        if table[0].shape[1] > 0:
            update_table(*table, *hyper)


def sparse_sgd_update(
    weights: Sequence[Tensor],
    ids: Sequence[Tensor],
    offsets: Sequence[Tensor],
    per_sample_weights: Sequence[Tensor | None],
    grad_outs: Sequence[Tensor],
    mean: Sequence[bool],
    lr: float,
    weight_decay: float = 0.0,
) -> None:
    """Reference of :func:`recis.ops.sparse_sgd_update`: one table at a time."""
    _table_by_table(
        _sgd_table, [weights, ids, offsets, per_sample_weights, grad_outs, mean], lr, weight_decay
    )


def sparse_adagrad_update(
    weights: Sequence[Tensor],
    state_sums: Sequence[Tensor],
    ids: Sequence[Tensor],
    offsets: Sequence[Tensor],
    per_sample_weights: Sequence[Tensor | None],
    grad_outs: Sequence[Tensor],
    mean: Sequence[bool],
    lr: float,
    eps: float,
    weight_decay: float = 0.0,
) -> None:
    """Reference of :func:`recis.ops.sparse_adagrad_update`: one table at a time."""
    lists = [weights, state_sums, ids, offsets, per_sample_weights, grad_outs, mean]
    _table_by_table(_adagrad_table, lists, lr, eps, weight_decay)


def sparse_rowwise_adagrad_update(
    weights: Sequence[Tensor],
    state_sums: Sequence[Tensor],
    ids: Sequence[Tensor],
    offsets: Sequence[Tensor],
    per_sample_weights: Sequence[Tensor | None],
    grad_outs: Sequence[Tensor],
    mean: Sequence[bool],
    lr: float,
    eps: float,
    weight_decay: float = 0.0,
) -> None:
    """Reference of :func:`recis.ops.sparse_rowwise_adagrad_update`: one table at a time."""
    lists = [weights, state_sums, ids, offsets, per_sample_weights, grad_outs, mean]
    _table_by_table(_rowwise_adagrad_table, lists, lr, eps, weight_decay)


def sparse_adam_update(
    weights: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    ids: Sequence[Tensor],
    offsets: Sequence[Tensor],
    per_sample_weights: Sequence[Tensor | None],
    grad_outs: Sequence[Tensor],
    mean: Sequence[bool],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    steps: Sequence[int],
    decoupled_weight_decay: bool,
) -> None:
    """Reference of :func:`recis.ops.sparse_adam_update`: one table at a time."""
    lists = [weights, exp_avgs, exp_avg_sqs, ids, offsets, per_sample_weights, grad_outs, mean]
    _table_by_table(
        _adam_table, [*lists, steps], lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay
    )


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


def route(
    values: Tensor,
    lengths: Tensor,
    weights: Tensor | None,
    batch: int,
    plan: RoutingPlan,
    with_positions: bool = False,
) -> Routes:
    """Reference of :func:`recis.ops.route`: one id at a time, slot by slot."""
    key_table, key_feature = plan.key_table.tolist(), plan.key_feature.tolist()
    bounds, slots = plan.table_bounds.tolist(), plan.table_slots.tolist()
    divide = plan.table_divide.tolist()
    num_slots = plan.slot_features.numel()
    # bags[s][feature][b]: (position, local id, weight) of each id sent to slot s.
    bags = [[[[] for _ in range(batch)] for _ in range(n)] for n in plan.slot_features.tolist()]
    pos = 0
    for bag, length in enumerate(lengths.tolist()):
        f, b = divmod(bag, batch)
        t = key_table[f]
        for _ in range(length):
            v = int(values[pos])
            if t >= 0:
                bnd = bounds[t]
                if not bnd[0] <= v < bnd[-1]:
                    raise ValueError(f"value {v} at position {pos} is outside table {t}'s rows")
                i = max(k for k in range(len(bnd) - 1) if bnd[k] <= v)
                w = 1.0 if weights is None else float(weights[pos])
                if divide[t]:
                    w = float(torch.tensor(w, dtype=torch.float32) / max(length, 1))
                for s in slots[t][i]:
                    if s >= 0:
                        bags[s][key_feature[f]][b].append((pos, v - bnd[i], w))
            pos += 1
    ints: list[int] = []
    sent: list[tuple[int, int, float]] = []
    dests = plan.slot_dest.tolist()
    for d in dict.fromkeys(dests):
        mine = [s for s in range(num_slots) if dests[s] == d]
        ints += [len(bag) for s in mine for feature in bags[s] for bag in feature]
        ids = [e for s in mine for feature in bags[s] for bag in feature for e in bag]
        ints += [e[1] for e in ids]
        sent += ids
    want_w = weights is not None or any(divide)
    return Routes(
        torch.tensor(ints, dtype=torch.int64),
        torch.tensor([e[2] for e in sent], dtype=torch.float32) if want_w else None,
        [sum(len(bag) for feature in bags[s] for bag in feature) for s in range(num_slots)],
        torch.tensor([e[0] for e in sent], dtype=torch.int64) if with_positions else None,
    )


def dot_interaction(dense: Tensor, embeddings: Tensor) -> Tensor:
    """Reference of :func:`recis.ops.dot_interaction`: bmm, then the strict upper triangle."""
    b, d = dense.shape
    x = torch.cat([dense.unsqueeze(1), embeddings.reshape(b, embeddings.shape[1] // d, d)], dim=1)
    n = x.shape[1]
    rows, cols = torch.triu_indices(n, n, offset=1, device=x.device)
    dots = torch.bmm(x, x.transpose(1, 2))[:, rows, cols]
    return torch.cat([dense, dots], dim=1)


def parse_criteo_lines(
    text: Tensor,
    delimiter: str,
    table_sizes: Sequence[int],
    missing_id: int,
    *,
    first_line: int = 0,
    phases: tuple[int, int, int] = (1, 0, 1),
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Reference of :func:`recis.ops.criteo_text.parse_criteo_lines`: line by line, with
    Python's ``int`` and ``float`` on the fields the rules call plain."""
    data = bytes(text.tolist())
    labels: list[float] = []
    dense: list[list[float]] = []
    ids: list[list[int]] = []
    ends: list[list[int]] = []
    pos = lines = 0
    hex_digits = set(b"0123456789abcdefABCDEF")

    def count(field: bytes) -> float | None:
        digits = field[1:] if field[:1] == b"-" else field
        if field == b"":
            return 0.0
        if not 1 <= len(digits) <= 18 or not all(48 <= c <= 57 for c in digits):
            return None
        return float(int(field))

    while pos < len(data):
        nl = data.find(b"\n", pos)
        nxt = len(data) if nl < 0 else nl + 1
        line = data[pos : len(data) if nl < 0 else nl].rstrip(b"\r")
        modulus, lo, hi = phases
        if lo <= (first_line + lines) % modulus < hi and line.strip(b" \t\r\v\f"):
            fields = line.split(delimiter.encode())
            if len(fields) != 40 or fields[0] not in (b"0", b"1"):
                break
            counts = [count(f) for f in fields[1:14]]
            cats = fields[14:]
            if any(c is None for c in counts) or any(
                len(c) > 16 or not set(c) <= hex_digits for c in cats
            ):
                break
            labels.append(float(fields[0]))
            dense.append(counts)  # type: ignore[arg-type]
            ids.append(
                [
                    int(c, 16) % s if c else missing_id
                    for c, s in zip(cats, table_sizes, strict=True)
                ]
            )
            ends.append([nxt, lines + 1])
        lines += 1
        pos = nxt
    return (
        torch.tensor(labels, dtype=torch.float64),
        torch.tensor(dense, dtype=torch.float64).reshape(-1, 13),
        torch.tensor(ids, dtype=torch.int64).reshape(-1, 26),
        torch.tensor(ends, dtype=torch.int64).reshape(-1, 2),
        torch.tensor([pos, lines], dtype=torch.int64),
    )


def parse_hex_column(
    offsets: Tensor, data: Tensor, valid: Tensor | None, table_size: int, missing_id: int
) -> tuple[Tensor, int]:
    """Reference of :func:`recis.ops.criteo_text.parse_hex_column`: string by string, with
    Python's ``int``, up to the first string that is not 1 to 16 hex digits."""
    raw = bytes(data.tolist())
    bounds = offsets.tolist()
    n = len(bounds) - 1
    ids = [missing_id] * n
    hex_digits = set(b"0123456789abcdefABCDEF")
    for i in range(n):
        s = raw[bounds[i] : bounds[i + 1]]
        if (valid is not None and not bool(valid[i])) or not s:
            continue
        if len(s) > 16 or not set(s) <= hex_digits:
            return torch.tensor(ids, dtype=torch.int64), i
        ids[i] = int(s, 16) % table_size
    return torch.tensor(ids, dtype=torch.int64), -1
