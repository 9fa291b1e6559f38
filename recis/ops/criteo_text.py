"""Criteo text parsed in C++: lines (``recis::parse_criteo_lines``), the fast path of
:mod:`recis.io`'s TSV/CSV reader, and Arrow string columns of hex categoricals
(``recis::parse_hex_column``), that of its Parquet reader."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

import recis  # noqa: F401  (loads the kernels)


class ParsedLines(NamedTuple):
    """The plain records at the start of a text block (see :func:`parse_criteo_lines`)."""

    labels: Tensor  # float64 [n]
    dense: Tensor  # float64 [n, 13], missing counts 0
    ids: Tensor  # int64 [n, 26], missing categoricals missing_id
    ends: Tensor  # int64 [n, 2]: byte offset after each record's line, lines read through it
    stop: Tensor  # int64 [2]: byte offset and lines read where parsing stopped


def parse_criteo_lines(
    text: Tensor,
    delimiter: str,
    table_sizes: Sequence[int],
    missing_id: int,
    *,
    first_line: int = 0,
    phases: tuple[int, int, int] = (1, 0, 1),
) -> ParsedLines:
    """Parses Criteo records (``label, I1..I13, C1..C26``) from the start of ``text``
    (uint8, CPU) up to the first line that is not plain.

    ``phases = (modulus, lo, hi)`` keeps only the lines whose number ``n`` (``first_line``
    plus the lines before it in ``text``) has ``lo <= n % modulus < hi``; the others are
    passed over unread, like blank lines (they are other ranks' records).

    Plain: exactly 40 fields split by ``delimiter``; the label ``0`` or ``1``; each
    count empty (missing: 0) or an optional ``-`` and at most 18 decimal digits; each
    categorical empty (missing: ``missing_id``) or at most 16 hex digits, taken modulo
    its table size. Lines of only blanks are skipped. Such lines parse to exactly what
    :class:`recis.io.criteo.RecordParser` gives; any other line stops the parse there
    (``stop``), for the caller to handle in Python.

    Example::

        >>> line = "1\\t5" + "\\t" * 12 + "\\t1f" * 26 + "\\n"
        >>> out = parse_criteo_lines(torch.frombuffer(bytearray(line.encode()), dtype=torch.uint8),
        ...                          "\\t", [10] * 26, -1)
        >>> out.labels, out.dense[0, 0], out.ids[0, 0], out.stop
        (tensor([1.], dtype=torch.float64), tensor(5., dtype=torch.float64), tensor(1), tensor([94,  1]))
    """
    if len(delimiter.encode()) != 1:
        raise ValueError(f"delimiter must be one byte, got {delimiter!r}")
    return ParsedLines(
        *torch.ops.recis.parse_criteo_lines(
            text, ord(delimiter.encode()), list(table_sizes), missing_id, first_line, *phases
        )
    )


def parse_hex_column(
    offsets: Tensor, data: Tensor, valid: Tensor | None, table_size: int, missing_id: int
) -> tuple[Tensor, int]:
    """The ids of a column of categorical strings in Arrow's layout: string ``i`` is
    bytes ``data[offsets[i]:offsets[i + 1]]`` (``offsets`` int32 or int64, ``n + 1``
    entries; ``data`` uint8, CPU), null where ``valid[i]`` is False (``valid``: bool
    ``[n]``, or None for no nulls).

    Returns ``(ids, first_bad)``: ``ids`` int64 ``[n]``, each string's hex value modulo
    ``table_size``, ``missing_id`` for a null or empty one, as
    :class:`recis.io.criteo.RecordParser` gives them; ``first_bad`` the first string
    that is not 1 to 16 hex digits (its id and the rest's are then ``missing_id``), or
    -1. Offsets
    out of order or past ``data`` raise ``RuntimeError``.

    Example::

        >>> data = torch.tensor(list(b"1fzzA"), dtype=torch.uint8)
        >>> parse_hex_column(torch.tensor([0, 2, 2, 5]), data, None, 10, -1)
        (tensor([ 1, -1, -1]), 2)
    """
    return torch.ops.recis.parse_hex_column(offsets, data, valid, table_size, missing_id)
