"""EmbeddingTable's gradient records: made now, or when first read (a sharded lookup's
gradient whose all-to-all may still be landing)."""

import torch

from recis.nn import EmbeddingBagConfig
from recis.nn.table import EmbeddingTable, SparseGrad


def _table() -> EmbeddingTable:
    return EmbeddingTable(EmbeddingBagConfig("t", 10, 2, ["f"]), torch.zeros(10, 2))


def _grad(row: int, value: float) -> SparseGrad:
    return SparseGrad(
        torch.tensor([row]), torch.tensor([0, 1]), None, torch.full((1, 2), value), False
    )


def test_a_gradient_recorded_as_a_function_is_made_once_when_first_read():
    table, calls = _table(), []

    def later() -> SparseGrad:
        calls.append(1)
        return _grad(3, 2.0)

    table.record_grad(_grad(1, 1.0))
    table.record_grad(later)
    assert calls == []
    joined = table.sparse_grad()
    assert calls == [1]
    assert joined.ids.tolist() == [1, 3]
    assert joined.offsets.tolist() == [0, 1, 2]
    assert joined.grad_out.tolist() == [[1.0, 1.0], [2.0, 2.0]]
    table.sparse_grad()
    assert calls == [1]


def test_zero_grad_makes_the_pending_gradients_before_dropping_them():
    # Making one waits for its exchange: zero_grad never leaves one in flight.
    table, calls = _table(), []
    table.record_grad(lambda: calls.append(1) or _grad(0, 1.0))
    table.zero_grad()
    assert calls == [1]
    assert table.sparse_grad() is None
