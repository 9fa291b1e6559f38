"""SparseSGD: plain SGD on the touched rows of embedding tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from recis import ops
from recis.nn.table import EmbeddingTable, SparseGrad
from recis.optim.sparse_optimizer import SparseOptimizer, check_non_negative, grad_lists


class SparseSGD(SparseOptimizer):
    """``w -= lr * (g + weight_decay * w)`` on every row touched since the last step.

    Equals ``torch.optim.SGD`` (no momentum) when every row is touched, and FBGEMM's
    ``EXACT_SGD``. No state.

    Example::

        >>> opt = SparseSGD(filter_out_sparse_param(model), lr=0.1)
        >>> model(batch).backward(); opt.step(); opt.zero_grad()
    """

    def __init__(
        self, tables: Mapping[str, EmbeddingTable], lr: float = 1e-3, weight_decay: float = 0.0
    ) -> None:
        check_non_negative(type(self).__name__, lr=lr, weight_decay=weight_decay)
        super().__init__(tables, {"lr": lr, "weight_decay": weight_decay})

    def _state_spec(self, group: dict[str, Any]) -> dict[str, tuple[str, float]]:
        return {}

    def _update(
        self,
        weights: list[Tensor],
        grads: list[SparseGrad],
        states: list[dict[str, Tensor]],
        group: dict[str, Any],
    ) -> None:
        ops.sparse_sgd_update(
            weights, *grad_lists(grads), float(group["lr"]), float(group["weight_decay"])
        )
