"""Hand-built "sharded models" for checkpoint tests.

Each rank holds :class:`EmbeddingTable` shards with the boxes a placement gives it
(what DistributedModelParallel produces), filled with slices of deterministic global
tensors so that any rank can check what it loaded. ``FakeSparseOptimizer`` is a test
double of the sparse-optimizer *interface* (``table_state``/``set_table_state``)
with per-element, per-row and scalar state.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

from recis.nn import EmbeddingBagConfig
from recis.nn.table import EmbeddingTable

PLACEMENTS = ("table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel")
# Sizes not divisible by 2 or 3, so that every split is uneven.
ROWS = (13, 17, 19, 23, 25, 29, 31, 35, 37, 41, 43)
COLS = (5, 7, 11)


def _blocks(n: int, parts: int) -> list[tuple[int, int]]:
    size = -(-n // parts)
    return [(min(i * size, n), min((i + 1) * size, n)) for i in range(parts)]


def boxes(placement: str, rows: int, cols: int, world: int, index: int) -> dict[int, tuple]:
    """rank -> (r0, r1, c0, c1) for a table under ``placement`` (``index`` spreads
    whole tables over ranks). Ranks absent from the result hold nothing of it."""
    if placement == "table_wise":
        return {index % world: (0, rows, 0, cols)}
    if placement == "data_parallel":
        return dict.fromkeys(range(world), (0, rows, 0, cols))
    if placement == "row_wise":
        return {r: (a, b, 0, cols) for r, (a, b) in enumerate(_blocks(rows, world)) if b > a}
    if placement == "column_wise":
        return {r: (0, rows, a, b) for r, (a, b) in enumerate(_blocks(cols, world)) if b > a}
    if placement == "table_row_wise":
        # Groups ("hosts") of 2 ranks; the table lives on one group, row-split inside it.
        groups = [list(range(g, min(g + 2, world))) for g in range(0, world, 2)]
        group = groups[index % len(groups)]
        return {
            group[i]: (a, b, 0, cols) for i, (a, b) in enumerate(_blocks(rows, len(group))) if b > a
        }
    raise ValueError(placement)


def _gen(name: str, salt: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{name}/{salt}".encode()))


def global_weight(name: str, rows: int, cols: int, version: int = 0) -> Tensor:
    return torch.randn(rows, cols, generator=_gen(name, f"w{version}"))


def global_moment(name: str, rows: int, cols: int) -> Tensor:
    return torch.rand(rows, cols, generator=_gen(name, "m"))


def global_row_state(name: str, rows: int) -> Tensor:
    return torch.rand(rows, generator=_gen(name, "r")) + 1.0


def scalar_state(name: str) -> Tensor:
    return torch.tensor(float(zlib.crc32(name.encode()) % 1000))


class ShardedTables(nn.Module):
    """One rank's part of a model: the table shards it holds plus a dense layer."""

    def __init__(self, specs: list[tuple[str, int, int, str, int]], rank: int, world: int):
        super().__init__()
        self.tables = nn.ModuleDict()
        self.boxes: dict[str, tuple] = {}
        for name, rows, cols, placement, index in specs:
            box = boxes(placement, rows, cols, world, index).get(rank)
            if box is None:
                continue
            r0, r1, c0, c1 = box
            cfg = EmbeddingBagConfig(name, rows, cols, [f"f_{name}"])
            self.tables[name] = EmbeddingTable(cfg, torch.zeros(r1 - r0, c1 - c0), r0, c0)
            self.boxes[name] = box
        self.dense = nn.Linear(4, 3)
        self.register_buffer("dense_buf", torch.zeros(3))


class Wrapped(nn.Module):
    """Stands in for DDP/DMP: saves dense names under a ``module.`` prefix."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


class FakeSparseOptimizer:
    """Test double of the sparse-optimizer interface with all three state kinds:
    ``momentum`` per element, ``visits`` per row, ``step`` a scalar. ``step()`` is
    SGD with momentum on the rows a table's SparseGrad touched."""

    def __init__(self, tables: dict[str, EmbeddingTable], lr: float = 0.1):
        self.tables, self.lr = tables, lr
        self.state = {
            name: {
                "momentum": torch.zeros_like(t.weight),
                "visits": torch.zeros(t.weight.shape[0]),
                "step": torch.tensor(0.0),
            }
            for name, t in tables.items()
        }

    def table_state(self, name: str) -> dict[str, Tensor]:
        return dict(self.state[name])

    def table_state_kinds(self, name: str) -> dict[str, str]:
        return {"momentum": "element", "visits": "row", "step": "scalar"}

    def set_table_state(self, name: str, state: dict[str, Tensor]) -> None:
        for key, value in state.items():
            if value.shape != self.state[name][key].shape:
                raise ValueError(f"{name}/{key}: shape {value.shape}")
        self.state[name] = dict(state)

    def step(self) -> None:
        from recis.ops.pooled_lookup import MEAN, SUM
        from recis.ops.reference import bag_row_grads

        for name, table in self.tables.items():
            g = table.sparse_grad()
            if g is None:
                continue
            grad = bag_row_grads(
                g.ids, g.offsets, g.per_sample_weights, MEAN if g.mean else SUM,
                g.grad_out, table.weight.shape[0],
            )  # fmt: skip
            st = self.state[name]
            st["momentum"].mul_(0.9).add_(grad)
            st["visits"].add_((grad.abs().sum(1) > 0).float())
            st["step"].add_(1)
            table.weight.sub_(self.lr * st["momentum"])
            table.zero_grad()


def fill(
    model: ShardedTables, opt: FakeSparseOptimizer | None, row_state_by_cols: tuple[str, ...] = ()
) -> None:
    """Fills shards (and optimizer state) with slices of the global tensors.

    For tables in ``row_state_by_cols`` the per-row state also depends on the shard's
    first column (as with RowWiseAdagrad, whose column shards keep their own values).
    """
    for name, table in model.tables.items():
        rows, cols = table.global_shape
        r0, r1, c0, c1 = model.boxes[name]
        table.weight.copy_(global_weight(name, rows, cols)[r0:r1, c0:c1])
        if opt is not None:
            row = global_row_state(name, rows)[r0:r1] + (
                1000.0 * c0 if name in row_state_by_cols else 0.0
            )
            opt.set_table_state(
                name,
                {
                    "momentum": global_moment(name, rows, cols)[r0:r1, c0:c1].clone(),
                    "visits": row,
                    "step": scalar_state(name),
                },
            )


def assert_tree_equal(a, b, path: str = "") -> None:
    """Exact equality of nested state (tensors bit for bit, dtype included)."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, (path, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, a.keys(), b.keys())
        for k in a:
            assert_tree_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tree_equal(x, y, f"{path}/{i}")
    else:
        assert a == b, (path, a, b)


class IOState:
    """A per-rank data position (what a dataset reader registers as io state)."""

    def __init__(self, pos: int = 0, seen: Tensor | None = None):
        self.pos = pos
        self.seen = torch.zeros(0, dtype=torch.int64) if seen is None else seen

    def state_dict(self) -> dict:
        return {"pos": self.pos, "seen": self.seen.clone(), "meta": ("v1", None, 2.5)}

    def load_state_dict(self, state: dict) -> None:
        assert state["meta"] == ("v1", None, 2.5)
        self.pos, self.seen = state["pos"], state["seen"]
