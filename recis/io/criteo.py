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
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from recis.ops import parse_hex_column

if TYPE_CHECKING:
    import pyarrow as pa

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


# Value of each ASCII byte as a hex digit; 255 marks a byte that is not one.
_HEX_DIGIT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_DIGIT[_c] = _i
for _i, _c in enumerate(b"ABCDEF", start=10):
    _HEX_DIGIT[_c] = _i

ParsedRows = tuple[np.ndarray, np.ndarray, np.ndarray]


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
            hint = (
                " (no label column, as in Criteo's test files? training and evaluation "
                "need labelled records)"
                if len(fields) == len(COLUMNS) - 1
                else ""
            )
            raise ValueError(f"expected {len(COLUMNS)} fields, got {len(fields)}{hint}")
        label = self._label(fields[0])
        dense = [self._dense(name, v) for name, v in zip(DENSE_NAMES, fields[1:14], strict=True)]
        ids = [
            self._categorical(name, v, size)
            for name, v, size in zip(SPARSE_NAMES, fields[14:], self.table_sizes, strict=True)
        ]
        return label, dense, ids

    def parse_many(self, rows: Sequence[Sequence[object]]) -> ParsedRows | None:
        """Vectorised :meth:`parse` of many all-string records (text files).

        Returns ``(labels [n], raw_dense [n, 13], ids [n, 26])`` as numpy arrays, or
        ``None`` when any record is not plain well-formed Criteo text (wrong field
        count, bad number, non-hex or over-long categorical, non-string values): the
        caller then parses record by record with :meth:`parse`, which gives the
        exact result or error, so both paths always agree.
        """
        n = len(rows)
        if n == 0 or any(len(r) != len(COLUMNS) for r in rows):
            return None
        cols = list(zip(*rows, strict=True))
        try:
            label_s = np.array(cols[0])
            dense_s = np.array(cols[1:14])  # [13, n]
            cat_s = np.array(cols[14:])  # [26, n]
            if any(a.dtype.kind != "U" for a in (label_s, dense_s, cat_s)):
                return None
            labels = label_s.astype(np.float64)
            dense = np.where(dense_s == "", "0", dense_s).astype(np.float64)
            cat_b = cat_s.astype(np.bytes_)  # non-ASCII raises
        except (ValueError, UnicodeError, TypeError):
            return None
        if not np.all((labels == 0) | (labels == 1)) or not np.all(np.isfinite(dense)):
            return None
        width = cat_b.dtype.itemsize
        if width > 16:  # more than 64 bits of hex: leave it to Python's integers
            return None
        chars = cat_b.view(np.uint8).reshape(len(SPARSE_NAMES), n, width)
        present = chars != 0  # numpy pads shorter strings with NUL bytes at the end
        if width > 1 and np.any(present[..., 1:] & ~present[..., :-1]):
            return None  # a NUL inside a value
        digits = _HEX_DIGIT[chars]
        if np.any(present & (digits == 255)):
            return None
        values = np.zeros((len(SPARSE_NAMES), n), dtype=np.uint64)
        for j in range(width):
            shifted = values * np.uint64(16) + digits[..., j].astype(np.uint64)
            values = np.where(present[..., j], shifted, values)
        sizes = np.array(self.table_sizes, dtype=np.uint64)[:, None]
        ids = (values % sizes).astype(np.int64)
        ids[~present[..., 0]] = self.missing
        return labels, dense.T.copy(), ids.T.copy()

    def parse_arrow(self, table: pa.Table) -> ParsedRows | None:
        """Vectorised :meth:`parse` of a pyarrow table with the :data:`COLUMNS` (a Parquet
        row group).

        Takes numeric labels and counts, integer or hex-string categoricals (plain
        strings, or dictionary-encoded ones as pandas' categoricals come back), nulls
        (and NaN counts) as missing values. Returns ``None`` when a column has another
        type or a value is not plain (a label other than 0 and 1, an infinite count, a
        categorical string other than 1 to 16 hex digits): the caller then parses row
        by row with :meth:`parse`, which gives the exact result or error.
        """
        import pyarrow as pa

        label = table.column("label")
        if not _is_number(label.type) or label.null_count:
            return None
        labels = label.cast(pa.float64(), safe=False).to_numpy()
        if not np.all((labels == 0) | (labels == 1)):
            return None
        dense = np.empty((table.num_rows, NUM_DENSE), dtype=np.float64)
        for f, name in enumerate(DENSE_NAMES):
            column = table.column(name)
            if not _is_number(column.type):
                return None
            values = column.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy()
            if np.any(np.isinf(values)):
                return None
            dense[:, f] = np.where(np.isnan(values), 0.0, values)
        ids = np.empty((table.num_rows, NUM_SPARSE), dtype=np.int64)
        for f, (name, size) in enumerate(zip(SPARSE_NAMES, self.table_sizes, strict=True)):
            column = table.column(name).combine_chunks()
            if pa.types.is_integer(column.type) and column.type != pa.uint64():
                values = column.fill_null(0).cast(pa.int64()).to_numpy() % size
                present = column.is_valid().to_numpy(zero_copy_only=False)
                ids[:, f] = np.where(present, values, self.missing)
            elif _is_string(column.type):
                parsed = _hex_ids(column, size, self.missing)
                if parsed is None:
                    return None
                ids[:, f] = parsed
            elif pa.types.is_dictionary(column.type) and _is_string(column.type.value_type):
                # (pandas' categoricals): each distinct string parsed once.
                words = _hex_ids(column.dictionary, size, self.missing)
                if words is None:
                    return None
                # The slot after the dictionary's holds the missing id for a null code
                # (codes widened first: len(words) may not fit their type).
                codes = column.indices.fill_null(0).to_numpy().astype(np.int64)
                if column.null_count:
                    codes = np.where(
                        column.is_valid().to_numpy(zero_copy_only=False), codes, len(words)
                    )
                ids[:, f] = np.append(words, self.missing)[codes]
            else:
                return None
        return labels, dense, ids

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


def _is_number(t: pa.DataType) -> bool:
    import pyarrow as pa

    return (pa.types.is_integer(t) or pa.types.is_floating(t)) and t != pa.uint64()


def _is_string(t: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _hex_ids(column: pa.Array, size: int, missing: int) -> np.ndarray | None:
    """The ids of a string array of hex numbers (:func:`recis.ops.parse_hex_column`:
    value % ``size``, ``missing`` for a null or empty string); None if a present one is
    not 1 to 16 hex digits."""
    import pyarrow as pa

    n = len(column)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    wide = pa.types.is_large_string(column.type)
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if wide else np.int32)
    offsets = offsets[column.offset : column.offset + n + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    )
    valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else None
    with warnings.catch_warnings():
        # Arrow's buffers are read-only, and the op only reads them.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        ids, first_bad = parse_hex_column(
            torch.from_numpy(offsets),
            torch.from_numpy(data),
            None if valid is None else torch.from_numpy(valid),
            size,
            missing,
        )
    return None if first_bad >= 0 else ids.numpy()
