"""SparseAdagrad and SparseRowWiseAdagrad on the touched rows of embedding tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from recis import ops
from recis.nn.table import EmbeddingTable, SparseGrad
from recis.optim.sparse_optimizer import (
    ELEMENT,
    ROW,
    SparseOptimizer,
    check_non_negative,
    grad_lists,
)


class SparseAdagrad(SparseOptimizer):
    """Adagrad per element: ``s += g²; w -= lr·g/(√s + eps)`` on touched rows.

    State ``state_sum`` is shaped like the table. Equals ``torch.optim.Adagrad``
    (``lr_decay=0``) when every row is touched; ``weight_decay`` is L2 as there.

    Example::

        >>> opt = SparseAdagrad(filter_out_sparse_param(model), lr=0.01)
    """

    # One accumulator per element; the row-wise subclass keeps one per row.
    _state_layout = ELEMENT
    _apply = staticmethod(ops.sparse_adagrad_update)

    def __init__(
        self,
        tables: Mapping[str, EmbeddingTable],
        lr: float = 1e-2,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
    ) -> None:
        check_non_negative(
            type(self).__name__,
            lr=lr,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
        )
        defaults = {
            "lr": lr,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
        }
        super().__init__(tables, defaults)

    def _state_spec(self, group: dict[str, Any]) -> dict[str, tuple[str, float]]:
        return {"state_sum": (self._state_layout, float(group["initial_accumulator_value"]))}

    def _update(
        self,
        weights: list[Tensor],
        grads: list[SparseGrad],
        states: list[dict[str, Tensor]],
        group: dict[str, Any],
    ) -> None:
        self._apply(
            weights,
            [state["state_sum"] for state in states],
            *grad_lists(grads),
            float(group["lr"]),
            float(group["eps"]),
            float(group["weight_decay"]),
        )


class SparseRowWiseAdagrad(SparseAdagrad):
    """Row-wise Adagrad: one accumulator per row, ``s += mean(g²)``, ``w -= lr·g/(√s + eps)``.

    The math of FBGEMM's ``EXACT_ROWWISE_ADAGRAD``; state ``state_sum`` is ``[rows]``,
    so it costs one float per row instead of one per element.

    Example::

        >>> opt = SparseRowWiseAdagrad(filter_out_sparse_param(model), lr=0.01)
    """

    _state_layout = ROW
    _apply = staticmethod(ops.sparse_rowwise_adagrad_update)

    def __init__(
        self,
        tables: Mapping[str, EmbeddingTable],
        lr: float = 1e-2,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
    ) -> None:
        super().__init__(tables, lr, eps, weight_decay, initial_accumulator_value)
