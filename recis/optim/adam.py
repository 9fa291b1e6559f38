"""SparseAdam and SparseAdamW on the touched rows of embedding tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from recis import ops
from recis.nn.table import EmbeddingTable, SparseGrad
from recis.optim.sparse_optimizer import (
    ELEMENT,
    SCALAR,
    SparseOptimizer,
    check_non_negative,
    grad_lists,
)


class SparseAdam(SparseOptimizer):
    """Adam on touched rows, moments per element, one step count per table.

    State: ``exp_avg`` and ``exp_avg_sq`` shaped like the table, ``step`` (0-d,
    advanced only when the table has a gradient). Bias correction and L2
    ``weight_decay`` as ``torch.optim.Adam``, which it equals when every row is
    touched at every step.

    Example::

        >>> opt = SparseAdam(filter_out_sparse_param(model), lr=1e-3, betas=(0.9, 0.999))
    """

    _decoupled = False

    def __init__(
        self,
        tables: Mapping[str, EmbeddingTable],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        name = type(self).__name__
        check_non_negative(name, lr=lr, eps=eps, weight_decay=weight_decay)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{name}: betas must be two values in [0, 1), got {betas}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(tables, defaults)

    def _state_spec(self, group: dict[str, Any]) -> dict[str, tuple[str, float]]:
        return {"step": (SCALAR, 0), "exp_avg": (ELEMENT, 0.0), "exp_avg_sq": (ELEMENT, 0.0)}

    def _update(
        self,
        weights: list[Tensor],
        grads: list[SparseGrad],
        states: list[dict[str, Tensor]],
        group: dict[str, Any],
    ) -> None:
        beta1, beta2 = group["betas"]
        ops.sparse_adam_update(
            weights,
            [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states],
            *grad_lists(grads),
            float(group["lr"]),
            float(beta1),
            float(beta2),
            float(group["eps"]),
            float(group["weight_decay"]),
            [int(state["step"]) + 1 for state in states],
            self._decoupled,
        )
        for state in states:  # only once the update went through
            state["step"] += 1


class SparseAdamW(SparseAdam):
    """AdamW on touched rows: :class:`SparseAdam` with decoupled weight decay.

    Touched rows are multiplied by ``1 - lr * weight_decay`` before the Adam step,
    as ``torch.optim.AdamW``; untouched rows do not decay (lazy).

    Example::

        >>> opt = SparseAdamW(filter_out_sparse_param(model), lr=1e-3, weight_decay=0.01)
    """

    _decoupled = True

    def __init__(
        self,
        tables: Mapping[str, EmbeddingTable],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(tables, lr, betas, eps, weight_decay)
