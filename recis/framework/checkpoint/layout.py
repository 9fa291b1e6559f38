"""Which rank writes which part of which embedding table, and under which keys.

Every rank describes the boxes it holds (a box is a row range x column range of a
table's global shape). Boxes held by several ranks (data-parallel replicas) are
written once: their rows are split evenly among the holders, so replicas share the
work instead of repeating it. Distinct boxes must not overlap and together must
cover the table, so every element is stored exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

# Kinds of per-table state, by the shape of the tensor relative to the local shard: the
# sparse optimizers' own (SparseOptimizer.table_state_kinds speaks of them too).
from recis.optim.sparse_optimizer import ELEMENT, ROW, SCALAR


@dataclass(frozen=True)
class Piece:
    """Rows ``[rows[0], rows[1])`` x columns ``[cols[0], cols[1])`` of ``table``."""

    table: str
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def num_rows(self) -> int:
        return self.rows[1] - self.rows[0]


def state_kind(table: str, key: str, shape: tuple[int, ...], local: tuple[int, int]) -> str:
    """Classifies a state tensor of a local shard of shape ``local``."""
    if len(shape) == 0:
        return SCALAR
    if len(shape) == 1 and shape[0] == local[0]:
        return ROW
    if tuple(shape) == tuple(local):
        return ELEMENT
    raise ValueError(
        f"table {table!r}: optimizer state {key!r} has shape {list(shape)}; expected the shard's "
        f"{list(local)} (per element), [{local[0]}] (per row) or [] (scalar)"
    )


def merge_table_metas(metas: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Joins every rank's ``{table: {"box", "global_shape", "dtype", "state"}}`` (and
    ``"hyper"``, the sparse optimizer's hyper-parameters, taken from the first rank).

    Returns ``{table: {"global_shape", "dtype", "state", "holders": {box: [ranks]}}}``
    after checking that ranks agree on each table and that its boxes tile it.
    """
    merged: dict[str, dict[str, Any]] = {}
    for rank, tables in enumerate(metas):
        for name, meta in tables.items():
            entry = merged.setdefault(
                name,
                {
                    "global_shape": meta["global_shape"],
                    "dtype": meta["dtype"],
                    "state": meta["state"],
                    "holders": {},
                    "first_rank": rank,
                    **({"hyper": meta["hyper"]} if "hyper" in meta else {}),
                },
            )
            for field in ("global_shape", "dtype", "state"):
                if entry[field] != meta[field]:
                    raise ValueError(
                        f"table {name!r}: rank {rank} has {field} {meta[field]} but rank "
                        f"{entry['first_rank']} has {entry[field]}"
                    )
            entry["holders"].setdefault(tuple(meta["box"]), []).append(rank)
    for name, entry in merged.items():
        _check_tiling(name, entry["global_shape"], list(entry["holders"]))
        del entry["first_rank"]
    return merged


def _check_tiling(name: str, shape: list[int], boxes: list[tuple[int, int, int, int]]) -> None:
    rows, cols = shape
    area = 0
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        if not (0 <= r0 <= r1 <= rows and 0 <= c0 <= c1 <= cols):
            raise ValueError(f"table {name!r}: shard box {[r0, r1, c0, c1]} lies outside {shape}")
        area += (r1 - r0) * (c1 - c0)
        for q0, q1, d0, d1 in boxes[:i]:
            if max(r0, q0) < min(r1, q1) and max(c0, d0) < min(c1, d1):
                raise ValueError(
                    f"table {name!r}: shards {[q0, q1, d0, d1]} and {[r0, r1, c0, c1]} overlap "
                    "without being the same box"
                )
    if area != rows * cols:
        raise ValueError(
            f"table {name!r}: the shards of all ranks cover {area} of {rows * cols} elements"
        )


def pieces_for_rank(merged: dict[str, dict[str, Any]], rank: int) -> list[Piece]:
    """The parts of tables that ``rank`` writes (replicated boxes split among holders)."""
    out: list[Piece] = []
    for name, entry in merged.items():
        for (r0, r1, c0, c1), ranks in entry["holders"].items():
            if rank not in ranks:
                continue
            i, n = ranks.index(rank), len(ranks)
            lo, hi = r0 + (r1 - r0) * i // n, r0 + (r1 - r0) * (i + 1) // n
            # A box with no rows still gets one (empty) piece, from its first holder,
            # so every table with zero rows or columns is still recorded.
            if hi > lo or (i == 0 and r1 == r0):
                out.append(Piece(name, (lo, hi), (c0, c1)))
    return out


def split_rows(piece: Piece, max_rows: int) -> list[Piece]:
    """``piece`` cut into consecutive row chunks of at most ``max_rows`` rows."""
    if piece.num_rows <= max_rows:
        return [piece]
    r0, r1 = piece.rows
    return [
        Piece(piece.table, (lo, min(lo + max_rows, r1)), piece.cols)
        for lo in range(r0, r1, max_rows)
    ]


# Below this size a table piece is not cut further to feed more writer threads.
MIN_CHUNK_BYTES = 16 << 20


def rank_table_items(
    merged: dict[str, dict[str, Any]],
    rank: int,
    tables: dict[str, dict[str, Any]],
    writers: int,
) -> tuple[dict[str, Tensor], list[dict[str, Any]], dict[str, dict[str, str]]]:
    """What ``rank`` writes of its table shards (``tables``: name -> ``row_offset`` and
    state ``tensors``, the weight among them): ``(items, pieces, scalars)``, the
    tensors by unique key; the manifest pieces (table, rows, cols, state key -> item
    key); each table's scalar state keys. Big pieces are cut in row chunks so that
    each of the ``writers`` threads gets a share of the bytes; a scalar is written
    once, by the piece holding element (0, 0) of its table (identical on every shard).
    """
    items: dict[str, Tensor] = {}
    pieces: list[dict[str, Any]] = []
    scalars: dict[str, dict[str, str]] = {}
    mine = pieces_for_rank(merged, rank)

    def row_bytes(p: Piece) -> int:
        state = tables[p.table]["tensors"].values()
        return sum(v[:1].numel() * v.element_size() for v in state if v.dim())

    total = sum(p.num_rows * row_bytes(p) for p in mine)
    chunk_bytes = max(MIN_CHUNK_BYTES, math.ceil(total / writers))
    for piece in mine:
        offset, state = tables[piece.table]["row_offset"], tables[piece.table]["tensors"]
        kinds = merged[piece.table]["state"]
        max_rows = max(1, chunk_bytes // max(1, row_bytes(piece)))
        for chunk in split_rows(piece, max_rows):
            lo, hi = chunk.rows[0] - offset, chunk.rows[1] - offset
            tag = f"{chunk.rows[0]}-{chunk.rows[1]}.{chunk.cols[0]}-{chunk.cols[1]}"
            refs = {}
            for key, kind in kinds.items():
                if kind != SCALAR:
                    refs[key] = f"sparse/{piece.table}/{key}/{tag}"
                    items[refs[key]] = state[key][lo:hi]
            pieces.append(
                {
                    "table": piece.table,
                    "rows": list(chunk.rows),
                    "cols": list(chunk.cols),
                    "tensors": refs,
                }
            )
        if piece.rows[0] == 0 and piece.cols[0] == 0:
            for key, kind in kinds.items():
                if kind == SCALAR:
                    item = f"sparse/{piece.table}/{key}/scalar"
                    items[item] = state[key]
                    scalars.setdefault(piece.table, {})[key] = item
    return items, pieces, scalars
