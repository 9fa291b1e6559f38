"""Per-unique-row gradients and fused sparse-optimizer updates (``csrc/cpu/sparse_update.cpp``).

Every op takes a table's gradient in bag form (the fields of a
:class:`recis.nn.SparseGrad`): row ``ids[j]`` of bag ``b`` receives
``grad_out[b] * per_sample_weights[j]`` (÷ the bag length when ``mean``), duplicates
add up. The ``*_update`` ops take a batch of tables, one entry per table in each list
(``weights[t]`` with ``ids[t]``, ``offsets[t]``, ... ``mean[t]``), and one set of
hyper-parameters: they deduplicate every table's ids (on CPU, several tables at once
over the threads), then reduce each unique row's gradient and apply the optimizer to
that row and its state in one pass, in place; rows that no id names do not change.
Every table is checked before any changes; an error names the table by its index.
On CUDA the tables of one call share a device, and the whole batch is checked,
deduplicated and updated in one pass (one host sync).
Weights and states are float32 or float64, contiguous.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import recis  # noqa: F401  (loads the kernels)


def unique_row_grads(
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    grad_out: Tensor,
    mean: bool,
    num_rows: int,
) -> tuple[Tensor, Tensor]:
    """The gradient of a pooled lookup per unique row: ``(unique_ids [U], grads [U, dim])``.

    ``unique_ids`` is ascending (int64); ids must lie in ``[0, num_rows)``.

    Example::

        >>> ids, offsets = torch.tensor([2, 0, 2]), torch.tensor([0, 2, 3])
        >>> unique_row_grads(ids, offsets, None, torch.ones(2, 1), False, 4)
        (tensor([0, 2]), tensor([[1.], [2.]]))
    """
    return torch.ops.recis.unique_row_grads(
        ids, offsets, per_sample_weights, grad_out, mean, num_rows
    )


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
    """``w -= lr * (g + weight_decay * w)`` on every touched row of each table, in place.

    Example::

        >>> w = torch.zeros(3, 2)
        >>> sparse_sgd_update([w], [torch.tensor([1, 1])], [torch.tensor([0, 2])], [None],
        ...                   [torch.ones(1, 2)], [False], lr=0.5)
        >>> w[1]
        tensor([-1., -1.])
    """
    torch.ops.recis.sparse_sgd_update(
        list(weights), list(ids), list(offsets), list(per_sample_weights), list(grad_outs),
        list(mean), lr, weight_decay,
    )  # fmt: skip


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
    """Adagrad on touched rows: ``s += g²; w -= lr·g/(√s + eps)`` (each ``state_sums[t]`` like
    ``weights[t]``).

    ``weight_decay`` adds ``weight_decay * w`` to ``g`` first (as ``torch.optim.Adagrad``).

    Example::

        >>> w, s = torch.zeros(3, 2), torch.zeros(3, 2)
        >>> sparse_adagrad_update([w], [s], [torch.tensor([2])], [torch.tensor([0, 1])], [None],
        ...                       [torch.ones(1, 2)], [False], lr=0.1, eps=1e-10)
    """
    torch.ops.recis.sparse_adagrad_update(
        list(weights), list(state_sums), list(ids), list(offsets), list(per_sample_weights),
        list(grad_outs), list(mean), lr, eps, weight_decay,
    )  # fmt: skip


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
    """Row-wise Adagrad: ``s[row] += mean(g²); w -= lr·g/(√s[row] + eps)``; each
    ``state_sums[t]`` is ``[rows]``.

    The math of FBGEMM's ``EXACT_ROWWISE_ADAGRAD``; ``weight_decay`` is L2 (added to ``g``).

    Example::

        >>> w, s = torch.zeros(3, 2), torch.zeros(3)
        >>> sparse_rowwise_adagrad_update([w], [s], [torch.tensor([0])], [torch.tensor([0, 1])],
        ...                               [None], [torch.ones(1, 2)], [False], lr=0.1, eps=1e-8)
    """
    torch.ops.recis.sparse_rowwise_adagrad_update(
        list(weights), list(state_sums), list(ids), list(offsets), list(per_sample_weights),
        list(grad_outs), list(mean), lr, eps, weight_decay,
    )  # fmt: skip


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
    """One Adam (or AdamW when ``decoupled_weight_decay``) step on the touched rows.

    ``steps[t]`` is table ``t``'s step count after this update (bias correction as
    ``torch.optim.Adam``); Adam's ``weight_decay`` is L2, AdamW's multiplies the
    touched rows by ``1 - lr * weight_decay``.

    Example::

        >>> w, m, v = torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2)
        >>> sparse_adam_update([w], [m], [v], [torch.tensor([1])], [torch.tensor([0, 1])], [None],
        ...                    [torch.ones(1, 2)], [False], 1e-3, 0.9, 0.999, 1e-8, 0.0, [1], False)
    """
    torch.ops.recis.sparse_adam_update(
        list(weights), list(exp_avgs), list(exp_avg_sqs), list(ids), list(offsets),
        list(per_sample_weights), list(grad_outs), list(mean), lr, beta1, beta2, eps,
        weight_decay, [int(s) for s in steps], decoupled_weight_decay,
    )  # fmt: skip
