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
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from recis.io.criteo import COLUMNS, ParsedRows, RecordParser
from recis.io.split import Span

if TYPE_CHECKING:
    import pyarrow.parquet as pq

Record = tuple[str, list[object], dict[str, int]]
Phases = Sequence[int]
"""``[modulus, lo, hi]``: a reader keeps the records ``i`` (0-based line, or row, in the
file) with ``lo <= i % modulus < hi`` (see :class:`recis.io.split.Span`)."""

# Bytes of text handed to the C++ parser at a time.
TEXT_BLOCK_BYTES = 1 << 22


def _gzip_file_class() -> type[gzip.GzipFile]:
    """python-isal's ``GzipFile`` (about 2x the rows per second of the standard library's in
    ``benchmarks/criteo_reader.py``) when it is installed
    (``pip install recis[gzip]``), else the standard library's."""
    try:
        from isal.igzip import IGzipFile
    except ImportError:
        return gzip.GzipFile
    return IGzipFile


# What .gz files are read with.
GZIP_FILE = _gzip_file_class()


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
    """``"parquet"`` (by extension or magic bytes), ``"csv"`` or ``"tsv"`` (by the first
    line that is not blank)."""
    if _is_parquet(path, "auto"):
        return "parquet"
    with _open_binary(path) as f:
        first = next((line for line in f if line.strip()), b"")
    return "tsv" if b"\t" in first else "csv"


@contextlib.contextmanager
def _open_raw(path: str) -> Iterator[IO[bytes]]:
    """``path`` (a local path or an fsspec URL) for binary reading, as stored."""
    if "://" in path:
        import fsspec

        with fsspec.open(path, "rb") as f:
            yield f
    else:
        with open(path, "rb") as f:
            yield f


@contextlib.contextmanager
def _open_binary(path: str) -> Iterator[IO[bytes]]:
    """``path`` (a local path or an fsspec URL) for binary reading, ``.gz`` decompressed."""
    with _open_raw(path) as f:
        if path.lower().endswith(".gz"):
            with GZIP_FILE(fileobj=f, mode="rb") as g:  # type: ignore[arg-type]
                yield g
        else:
            yield f


# How much of a .gz file expanded_size decompresses to estimate the whole.
GZIP_SAMPLE_BYTES = 4 << 20


def expanded_size(path: str) -> int | None:
    """About how many bytes the ``.gz`` file ``path`` decompresses to, from its first
    :data:`GZIP_SAMPLE_BYTES` (exact for a smaller file); None when its size is not
    known. A reader's position in it counts decompressed bytes: this tells how far
    through the file that is. None too for a file that is not ``.gz``."""
    size = _file_size(path) if path.lower().endswith(".gz") else None
    if not size:
        return None
    with _open_raw(path) as raw, GZIP_FILE(fileobj=raw, mode="rb") as gz:  # type: ignore[arg-type]
        out = 0
        while raw.tell() < GZIP_SAMPLE_BYTES:
            chunk = gz.read(1 << 20)
            if not chunk:
                return out
            out += len(chunk)
        return out * size // raw.tell()


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
    end: int | None = None,
    phases: Phases | None = None,
) -> Iterator[Record | ParsedBlock]:
    """Records of a delimited text file, Criteo TSV (no header) or CSV (optional header).

    A first line whose first field is ``label`` is a header: columns are then matched
    by name. Empty lines are ignored. Position: ``{"offset": byte, "line": n}`` of the
    next line to read (``"line"`` absent where the line number is not known), or
    ``{"from": byte}``: the first line that starts at or after that byte. ``end``: read
    only the lines that start before that byte. ``phases``: only the lines of those
    phases (the others are not parsed), from a position that knows its line. With
    ``parser`` (and columns in the usual order) records come parsed in
    :class:`ParsedBlock` s, except the lines the C++ parser leaves.
    """
    with _open_binary(path) as f:
        order: list[int] | None = None
        first = f.readline()
        line_no: int | None = 1
        if first.decode("utf-8", "replace").split(delimiter)[0].strip() == "label":
            order = _column_order(first.decode("utf-8").rstrip("\r\n").split(delimiter), path)
            line_no = 2
        else:
            f.seek(0)
        if position and "from" in position:
            if position["from"] > f.tell():  # a cut inside the file: on to the next line
                f.seek(position["from"] - 1)
                f.readline()
                line_no = None
        elif position:
            f.seek(position["offset"])
            line_no = position.get("line")
        offset = f.tell()
        if phases is not None and line_no is None:
            raise ValueError(
                f"{path}: keeping phases of its lines needs a line number, got {position}"
            )
        if order == list(range(len(COLUMNS))):
            order = None
        if parser is None or order is not None:
            for line in iter(f.readline, b""):
                if end is not None and offset >= end:
                    return
                offset += len(line)
                mine = line_no is None or _kept(line_no - 1, phases)
                line_no = None if line_no is None else line_no + 1
                record = (
                    _text_record(path, line, delimiter, order, offset, line_no) if mine else None
                )
                if record is not None:
                    yield record
            return
        yield from _parse_text(f, path, delimiter, parser, offset, line_no, end, phases)


def _text_record(
    path: str,
    line: bytes,
    delimiter: str,
    order: list[int] | None,
    end: int,
    next_line: int | None,
) -> Record | None:
    """The record of one line (ending at byte ``end``, followed by line ``next_line``
    when the line number is known), or None for a blank line."""
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if not text.strip():
        return None
    fields: list[object] = text.split(delimiter)  # type: ignore[assignment]
    if order is not None and len(fields) == len(order):
        fields = [fields[i] for i in order]
    if next_line is None:
        return f"{path}: line at byte {end - len(line)}", fields, {"offset": end}
    return f"{path}:{next_line - 1}", fields, {"offset": end, "line": next_line}


def _parse_text(
    f: IO[bytes],
    path: str,
    delimiter: str,
    parser: RecordParser,
    offset: int,
    line_no: int | None,
    end: int | None,
    phases: Phases | None,
) -> Iterator[Record | ParsedBlock]:
    """Blocks of whole lines to the C++ parser; each line it leaves, as a record.
    ``offset`` and ``line_no``: where ``f`` is, in bytes and in lines (None: not
    known); only lines that start before byte ``end`` are read, and of ``phases``."""
    import torch

    from recis.ops import parse_criteo_lines

    keys = ("offset",) if line_no is None else ("offset", "line")
    buf = bytearray()
    while True:
        data = f.read(TEXT_BLOCK_BYTES)
        buf += data
        last = not data
        cut = len(buf) if last else buf.rfind(b"\n") + 1
        if end is not None:
            # The line holding byte end - 1 is the last one: its newline ends the read.
            newline = buf.find(b"\n", max(end - offset - 1, 0))
            if end <= offset:
                cut, last = 0, True
            elif newline >= 0:
                cut, last = newline + 1, True
        if not last and cut == 0:
            continue  # a line longer than the block: read on
        pos = 0
        while pos < cut:
            text = torch.frombuffer(buf, dtype=torch.uint8, offset=pos, count=cut - pos)
            # The C++ parser passes over other phases' lines; a line it leaves is a kept one.
            parsed = parse_criteo_lines(
                text,
                delimiter,
                parser.table_sizes,
                parser.missing,
                first_line=0 if line_no is None else line_no - 1,
                phases=(1, 0, 1) if phases is None else tuple(phases),  # type: ignore[arg-type]
            )
            used, lines = parsed.stop.tolist()
            if parsed.labels.numel():
                ends = parsed.ends.numpy()[:, : len(keys)] + np.array(
                    [offset + pos, line_no or 0][: len(keys)]
                )
                rows = (parsed.labels.numpy(), parsed.dense.numpy(), parsed.ids.numpy())
                yield ParsedBlock(rows, keys, ends)
            pos += used
            if line_no is not None:
                line_no += lines
            if pos < cut:  # a line the C++ parser leaves to RecordParser
                stop = buf.find(b"\n", pos, cut)
                stop = cut if stop < 0 else stop + 1
                if line_no is not None:
                    line_no += 1
                record = _text_record(
                    path, bytes(buf[pos:stop]), delimiter, None, offset + stop, line_no
                )
                if record is not None:
                    yield record
                pos = stop
        buf = buf[cut:]
        offset += cut
        if last:
            return


def read_parquet(
    path: str,
    position: dict[str, int] | None = None,
    parser: RecordParser | None = None,
    end: int | None = None,
    phases: Phases | None = None,
) -> Iterator[Record | ParsedBlock]:
    """Records of a Parquet file with the Criteo column names (any extra columns ignored).

    Dense columns may be numeric or strings, categorical ones hex strings (plain or
    dictionary-encoded, as pandas writes category columns) or integers; nulls are
    missing values. Position: ``{"row": n}`` rows already read;
    ``end``: the row to stop before; ``phases``: only the rows of those phases. With
    ``parser``, a row group comes parsed as one
    :class:`ParsedBlock` when :meth:`RecordParser.parse_arrow` takes it, else record by
    record.
    """
    import pyarrow.parquet as pq

    with _open_binary(path) as f:
        yield from _read_parquet_file(pq.ParquetFile(f), path, position, parser, end, phases)


def _read_parquet_file(
    pf: pq.ParquetFile,
    path: str,
    position: dict[str, int] | None,
    parser: RecordParser | None,
    end: int | None,
    phases: Phases | None,
) -> Iterator[Record | ParsedBlock]:
    names = pf.schema_arrow.names
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}: Parquet file lacks column(s) {missing} (has {names})")
    start = position["row"] if position else 0
    stop = pf.metadata.num_rows if end is None else end
    first_row = 0
    for g in range(pf.num_row_groups):
        if first_row >= stop:
            return
        n = pf.metadata.row_group(g).num_rows
        if first_row + n <= start:  # whole row group already read: skip without decoding
            first_row += n
            continue
        skip = max(0, start - first_row)
        take = min(n, stop - first_row) - skip
        if take <= 0:
            return
        table = pf.read_row_group(g, columns=COLUMNS).slice(skip, take)
        rows = parser.parse_arrow(table) if parser is not None else None
        if rows is not None:
            after = np.arange(first_row + skip + 1, first_row + skip + take + 1, dtype=np.int64)
            if phases is not None:
                keep = _kept(after - 1, phases)
                rows, after = tuple(a[keep] for a in rows), after[keep]  # type: ignore[assignment]
            yield ParsedBlock(rows, ("row",), after[:, None])
        else:
            columns = [table.column(c).to_pylist() for c in COLUMNS]
            for i in range(take):
                row = first_row + skip + i
                if _kept(row, phases):
                    yield f"{path}: row {row + 1}", [col[i] for col in columns], {"row": row + 1}
        first_row += n


def open_reader(
    path: str,
    fmt: str,
    position: dict[str, int] | None = None,
    parser: RecordParser | None = None,
    end: int | None = None,
    phases: Phases | None = None,
) -> Iterator[Record | ParsedBlock]:
    """The record reader of ``path`` in format ``fmt`` (see :data:`FORMATS`) from
    ``position`` to ``end`` (see :func:`measure`), of the records of ``phases`` only
    when given; with ``parser``, records come parsed in blocks where they can."""
    fmt = _resolve_format(path, fmt)
    if fmt == "parquet":
        return read_parquet(path, position, parser, end, phases)
    return read_text(path, "\t" if fmt == "tsv" else ",", position, parser, end, phases)


def _kept(index: Any, phases: Phases | None) -> Any:
    """Whether record ``index`` (an int or an int array) is of ``phases``."""
    if phases is None:
        return True
    modulus, lo, hi = phases
    phase = index % modulus
    return (lo <= phase) & (phase < hi)


def measure(
    path: str,
    fmt: str,
    index: int,
    start: dict[str, int],
    end: int | None,
    phases: Phases | None = None,
) -> Span:
    """The :class:`~recis.io.split.Span` of file ``index`` (``path``) from reader position
    ``start`` to ``end``: in bytes for plain text, in rows for Parquet (its footer read
    for the row count), in ``phases`` (all when None) of the records for a file read
    whole: ``.gz`` and a file whose size the file system does not report (some HTTP
    servers). Raises ``ValueError`` naming the file."""
    try:
        size = _file_size(path)
        if path.lower().endswith(".gz") or size is None:
            return _whole_file_span(index, start, end, size or 0, phases)
        if _is_parquet(path, fmt):
            import pyarrow.parquet as pq

            with _open_binary(path) as f:
                rows = pq.ParquetFile(f).metadata.num_rows
            lo = start.get("row", 0)
            hi = rows if end is None else end
            weight = 0 if hi <= lo else max(1, size * (hi - lo) // rows)
            return Span(index, start, end, lo, hi, weight, "rows")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read it to share it over the ranks: {e}") from e
    lo = start.get("offset", start.get("from", 0))
    hi = size if end is None else end
    return Span(index, start, end, lo, hi, max(hi - lo, 0), "bytes")


def _whole_file_span(
    index: int, start: dict[str, int], end: int | None, size: int, phases: Phases | None
) -> Span:
    if phases is not None:
        modulus, lo, hi = phases
        weight = max(size * (hi - lo) // modulus, 1) if size else 0
        return Span(index, start, end, lo, hi, weight, "phases", modulus)
    if start and "line" not in start and "row" not in start:
        # Resumed where its records' numbers are not known: one phase, for one rank.
        return Span(index, start, end, 0, 1, size, "phases", 1)
    return Span(index, start, end, weight=size)


def _resolve_format(path: str, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return detect_format(path) if fmt == "auto" else fmt


def _is_parquet(path: str, fmt: str) -> bool:
    """Whether ``path`` is Parquet: ``fmt`` says so, or (``"auto"``) its extension or
    its magic bytes do."""
    if fmt != "auto":
        return fmt == "parquet"
    if path.lower().endswith((".parquet", ".pq")):
        return True
    with _open_binary(path) as f:
        return f.read(4) == b"PAR1"


def _file_size(path: str) -> int | None:
    if "://" in path:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        size = fs.size(p)
        return None if size is None else int(size)
    return os.path.getsize(path)
