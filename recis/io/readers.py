"""Record readers of one file each, resumable from a saved position.

A reader yields ``(location, fields, position)`` per data record: ``location`` names
the record for error messages (``"file:line"`` or ``"file: row n"``), ``fields`` are
the raw values in :data:`recis.io.criteo.COLUMNS` order, ``position`` is a small
dict of ints from which :func:`open_reader` resumes right after that record. Given a
:class:`~recis.io.criteo.RecordParser`, the readers yield most records already parsed,
many at a time, as :class:`ParsedBlock`: text through the C++ parser
(``recis.ops.parse_criteo_lines``), Parquet row groups through
:meth:`~recis.io.criteo.RecordParser.parse_arrow`; what those leave comes as records.
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import numpy as np

from recis.io.criteo import COLUMNS, ParsedRows, RecordParser

if TYPE_CHECKING:
    import pyarrow.parquet as pq

Record = tuple[str, list[object], dict[str, int]]

# Bytes of text handed to the C++ parser at a time.
TEXT_BLOCK_BYTES = 1 << 22


@dataclass
class ParsedBlock:
    """Consecutive records of one file, parsed: ``rows`` as RecordParser gives them, and
    ``positions[i]`` (values of ``keys``) the position right after record ``i``."""

    rows: ParsedRows
    keys: tuple[str, ...]
    positions: np.ndarray  # int64 [len(rows[0]), len(keys)]

    def __len__(self) -> int:
        return len(self.rows[0])


FORMATS = ("auto", "tsv", "csv", "parquet")


def detect_format(path: str) -> str:
    """``"parquet"`` (by extension or magic bytes), ``"csv"`` or ``"tsv"`` (by the first line)."""
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    with _open_binary(path) as f:
        head = f.read(4)
        if head == b"PAR1":
            return "parquet"
        first = head + f.readline()
    return "tsv" if b"\t" in first else "csv"


@contextlib.contextmanager
def _open_binary(path: str) -> Iterator[IO[bytes]]:
    """``path`` (a local path or an fsspec URL) for binary reading, ``.gz`` decompressed."""
    with contextlib.ExitStack() as stack:
        if "://" in path:
            import fsspec

            f: IO[bytes] = stack.enter_context(fsspec.open(path, "rb"))
        else:
            f = stack.enter_context(open(path, "rb"))
        if path.lower().endswith(".gz"):
            f = stack.enter_context(gzip.GzipFile(fileobj=f, mode="rb"))  # type: ignore[arg-type]
        yield f


def _column_order(header: list[str], path: str) -> list[int]:
    """Index of each of COLUMNS in a file's header (columns may come in any order)."""
    names = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}:1: header lacks column(s) {missing} (header: {names})")
    return [names.index(c) for c in COLUMNS]


def read_text(
    path: str,
    delimiter: str,
    position: dict[str, int] | None = None,
    parser: RecordParser | None = None,
) -> Iterator[Record | ParsedBlock]:
    """Records of a delimited text file, Criteo TSV (no header) or CSV (optional header).

    A first line whose first field is ``label`` is a header: columns are then matched
    by name. Empty lines are ignored. Position: ``{"offset": byte, "line": n}`` of the
    next line to read. With ``parser`` (and columns in the usual order) records come
    parsed in :class:`ParsedBlock` s, except the lines the C++ parser leaves.
    """
    with _open_binary(path) as f:
        order: list[int] | None = None
        first = f.readline()
        line_no = 1
        if first.decode("utf-8", "replace").split(delimiter)[0].strip() == "label":
            order = _column_order(first.decode("utf-8").rstrip("\r\n").split(delimiter), path)
            line_no = 2
        else:
            f.seek(0)
        if position:
            f.seek(position["offset"])
            line_no = position["line"]
        offset = f.tell()
        if order == list(range(len(COLUMNS))):
            order = None
        if parser is None or order is not None:
            for line in iter(f.readline, b""):
                offset += len(line)
                line_no += 1
                record = _text_record(path, line, delimiter, order, offset, line_no)
                if record is not None:
                    yield record
            return
        yield from _parse_text(f, path, delimiter, parser, offset, line_no)


def _text_record(
    path: str, line: bytes, delimiter: str, order: list[int] | None, end: int, next_line: int
) -> Record | None:
    """The record of one line (ending at byte ``end``, followed by line ``next_line``),
    or None for a blank line."""
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if not text.strip():
        return None
    fields: list[object] = text.split(delimiter)  # type: ignore[assignment]
    if order is not None and len(fields) == len(order):
        fields = [fields[i] for i in order]
    return f"{path}:{next_line - 1}", fields, {"offset": end, "line": next_line}


def _parse_text(
    f: IO[bytes], path: str, delimiter: str, parser: RecordParser, offset: int, line_no: int
) -> Iterator[Record | ParsedBlock]:
    """Blocks of whole lines to the C++ parser; each line it leaves, as a record.
    ``offset`` and ``line_no``: where ``f`` is, in bytes and in lines."""
    import torch

    from recis.ops import parse_criteo_lines

    buf = bytearray()
    while True:
        data = f.read(TEXT_BLOCK_BYTES)
        buf += data
        cut = len(buf) if not data else buf.rfind(b"\n") + 1
        if data and cut == 0:
            continue  # a line longer than the block: read on
        pos = 0
        while pos < cut:
            text = torch.frombuffer(buf, dtype=torch.uint8, offset=pos, count=cut - pos)
            parsed = parse_criteo_lines(text, delimiter, parser.table_sizes, parser.missing)
            used, lines = parsed.stop.tolist()
            if parsed.labels.numel():
                ends = parsed.ends.numpy() + np.array([offset + pos, line_no])
                rows = (parsed.labels.numpy(), parsed.dense.numpy(), parsed.ids.numpy())
                yield ParsedBlock(rows, ("offset", "line"), ends)
            pos += used
            line_no += lines
            if pos < cut:  # a line the C++ parser leaves to RecordParser
                end = buf.find(b"\n", pos, cut)
                end = cut if end < 0 else end + 1
                line_no += 1
                record = _text_record(
                    path, bytes(buf[pos:end]), delimiter, None, offset + end, line_no
                )
                if record is not None:
                    yield record
                pos = end
        buf = buf[cut:]
        offset += cut
        if not data:
            return


def read_parquet(
    path: str, position: dict[str, int] | None = None, parser: RecordParser | None = None
) -> Iterator[Record | ParsedBlock]:
    """Records of a Parquet file with the Criteo column names (any extra columns ignored).

    Dense columns may be numeric or strings, categorical ones hex strings or
    integers; nulls are missing values. Position: ``{"row": n}`` rows already read.
    With ``parser``, a row group comes parsed as one :class:`ParsedBlock` when
    :meth:`RecordParser.parse_arrow` takes it, else record by record.
    """
    import pyarrow.parquet as pq

    with _open_binary(path) as f:
        yield from _read_parquet_file(pq.ParquetFile(f), path, position, parser)


def _read_parquet_file(
    pf: pq.ParquetFile, path: str, position: dict[str, int] | None, parser: RecordParser | None
) -> Iterator[Record | ParsedBlock]:
    names = pf.schema_arrow.names
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}: Parquet file lacks column(s) {missing} (has {names})")
    start = position["row"] if position else 0
    first_row = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if first_row + n <= start:  # whole row group already read: skip without decoding
            first_row += n
            continue
        skip = max(0, start - first_row)
        table = pf.read_row_group(g, columns=COLUMNS).slice(skip)
        rows = parser.parse_arrow(table) if parser is not None else None
        if rows is not None:
            after = np.arange(first_row + skip + 1, first_row + n + 1, dtype=np.int64)
            yield ParsedBlock(rows, ("row",), after[:, None])
        else:
            columns = [table.column(c).to_pylist() for c in COLUMNS]
            for i in range(n - skip):
                row = first_row + skip + i
                yield f"{path}: row {row + 1}", [col[i] for col in columns], {"row": row + 1}
        first_row += n


def open_reader(
    path: str,
    fmt: str,
    position: dict[str, int] | None = None,
    parser: RecordParser | None = None,
) -> Iterator[Record | ParsedBlock]:
    """The record reader of ``path`` in format ``fmt`` (see :data:`FORMATS`); with
    ``parser``, records come parsed in blocks where they can."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "parquet":
        return read_parquet(path, position, parser)
    return read_text(path, "\t" if fmt == "tsv" else ",", position, parser)
