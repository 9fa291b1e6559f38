"""The Criteo display-advertising schema and how one record becomes model inputs.

A record is ``label, I1..I13, C1..C26``: a 0/1 click label, 13 integer counts (may be
missing or negative) and 26 categorical values written as 8-digit hex strings (may be
missing). Model inputs are derived as follows:

- dense ``I*``: ``log(1 + max(x, 0))``; a missing value is 0 (so it maps to 0 too).
- categorical ``C*``: the hex string parsed as an integer, modulo the feature's table
  size (integers, e.g. from a pre-processed Parquet file, are taken modulo directly).
  A missing value becomes an **empty bag** (length 0, pooled to zeros) by default, or
  the id ``missing_id`` when one is given (e.g. 0, to learn a "missing" embedding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

NUM_DENSE = 13
NUM_SPARSE = 26
DENSE_NAMES = [f"I{i}" for i in range(1, NUM_DENSE + 1)]
SPARSE_NAMES = [f"C{i}" for i in range(1, NUM_SPARSE + 1)]
COLUMNS = ["label", *DENSE_NAMES, *SPARSE_NAMES]

# Distinct values per categorical feature in the Criteo Kaggle (7-day) data set.
CRITEO_KAGGLE_CARDINALITIES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]  # fmt: skip

# Marks a missing categorical value that becomes an empty bag.
MISSING = -1


def default_table_sizes(cap: int = 100_000) -> list[int]:
    """Criteo Kaggle cardinalities capped at ``cap`` rows (larger ones are hashed).

    Example::

        >>> default_table_sizes(1000)[:4]
        [1000, 583, 1000, 1000]
    """
    return [min(c, cap) for c in CRITEO_KAGGLE_CARDINALITIES]


def resolve_table_sizes(table_sizes: int | Sequence[int] | None) -> list[int]:
    """One table size per categorical feature from an int (all equal), a list or None."""
    if table_sizes is None:
        sizes = default_table_sizes()
    elif isinstance(table_sizes, int):
        sizes = [table_sizes] * NUM_SPARSE
    else:
        sizes = [int(s) for s in table_sizes]
    if len(sizes) != NUM_SPARSE:
        raise ValueError(f"need {NUM_SPARSE} table sizes (C1..C26), got {len(sizes)}")
    for name, s in zip(SPARSE_NAMES, sizes, strict=True):
        if s <= 0:
            raise ValueError(f"table size of feature {name!r} must be > 0, got {s}")
    return sizes


def _is_missing(v: object) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


class RecordParser:
    """Turns the 40 raw fields of one record into ``(label, raw_dense, ids)``.

    ``raw_dense`` holds the 13 counts as floats (missing → 0; the log transform is
    applied per batch); ``ids`` holds 26 ids in their tables' ranges, or
    :data:`MISSING` for an empty bag. Raises ``ValueError`` naming the column; the
    caller adds the file and line.
    """

    def __init__(self, table_sizes: Sequence[int], missing_id: int | None = None) -> None:
        self.table_sizes = list(table_sizes)
        if missing_id is not None:
            for name, size in zip(SPARSE_NAMES, self.table_sizes, strict=True):
                if not 0 <= missing_id < size:
                    raise ValueError(
                        f"missing_id {missing_id} is outside table {name!r}'s range [0, {size})"
                    )
        self.missing = MISSING if missing_id is None else missing_id

    def parse(self, fields: Sequence[object]) -> tuple[float, list[float], list[int]]:
        if len(fields) != len(COLUMNS):
            raise ValueError(f"expected {len(COLUMNS)} fields, got {len(fields)}")
        label = self._label(fields[0])
        dense = [self._dense(name, v) for name, v in zip(DENSE_NAMES, fields[1:14], strict=True)]
        ids = [
            self._categorical(name, v, size)
            for name, v, size in zip(SPARSE_NAMES, fields[14:], self.table_sizes, strict=True)
        ]
        return label, dense, ids

    @staticmethod
    def _label(v: object) -> float:
        try:
            label = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"column 'label': expected 0 or 1, got {v!r}") from None
        if label not in (0.0, 1.0):
            raise ValueError(f"column 'label': expected 0 or 1, got {v!r}")
        return label

    @staticmethod
    def _dense(name: str, v: object) -> float:
        if _is_missing(v):
            return 0.0
        try:
            x = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"column {name!r}: expected a number, got {v!r}") from None
        if math.isnan(x) or math.isinf(x):
            raise ValueError(f"column {name!r}: expected a finite number, got {v!r}")
        return x

    def _categorical(self, name: str, v: object, size: int) -> int:
        if _is_missing(v):
            return self.missing
        if isinstance(v, int):
            return v % size
        try:
            return int(v, 16) % size  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"column {name!r}: expected a hex string, got {v!r}") from None
