"""Which part of the data each rank reads."""

from __future__ import annotations

import glob
import hashlib
import heapq
import itertools
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch.distributed as dist

from recis.framework.checkpoint.storage import check_url_supported

T = TypeVar("T")


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: explicit values, else the process group's, else ``(0, 1)``."""
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if rank is None:
        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = 0, 1
    assert world_size is not None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} of world_size {world_size}")
    return rank, world_size


def expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Files named by ``paths``: files as given, directories' files and globs sorted.

    A path with ``://`` is an fsspec URL (``s3://bucket/criteo/``, ``gs://...``,
    ``hdfs://...``, ``memory://...``; the protocol's fsspec package must be installed)
    and expands to URLs the readers open the same way. Hidden (``.*``) and ``_*`` names
    (Spark's ``_SUCCESS``, ``.crc`` files and ``_temporary/``) in directories and in
    what a wildcard matches are ignored; a folder's subfolders are not read. Raises
    ``ValueError`` when nothing matches, and when two paths name one file (a folder and
    a glob in it, say): its records would be read twice an epoch.

    Example::

        >>> expand_paths("s3://bucket/criteo/day_*.tsv.gz")
        ['s3://bucket/criteo/day_0.tsv.gz', 's3://bucket/criteo/day_1.tsv.gz']
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    named_by: dict[str, str] = {}  # each file (its absolute path, for local ones) -> path
    for p in paths:
        p = os.fspath(p)
        for f in _expand_url(p) if "://" in p else _expand_local(p):
            key = f if "://" in f else os.path.abspath(f)
            if key in named_by:
                raise ValueError(
                    f"{f} is named twice (by {named_by[key]!r} and {p!r}): its records "
                    "would be read twice an epoch; name each file once"
                )
            named_by[key] = p
            files.append(f)
    if not files:
        raise ValueError(f"no data files in {list(paths)!r}")
    return files


def files_digest(files: Sequence[str]) -> str:
    """A fingerprint of the names and order of ``files``, each taken relative to the
    folder that holds them all, so that it stays the same when that folder is mounted
    or copied elsewhere."""
    parts = [f.split("/") for f in files]
    common = 0
    for names in zip(*(p[:-1] for p in parts), strict=False):  # up to the shortest
        if len(set(names)) > 1:
            break
        common += 1
    relative = "\n".join("/".join(p[common:]) for p in parts)
    return hashlib.sha1(relative.encode()).hexdigest()[:16]


def _check_not_only_subfolders(folder: str, files: list[str], subfolders: list[str]) -> None:
    """Raises, naming the way to read them, when a folder holds no data ``files`` but
    ``subfolders`` (Hive-style ``day=1/`` partitions, say)."""
    if not files and subfolders:
        shown = ", ".join(sorted(subfolders)[:3]) + (", ..." if len(subfolders) > 3 else "")
        raise ValueError(
            f"no data files in {folder!r}: its {len(subfolders)} subfolder(s) ({shown}) "
            f"are not read; name their files with a glob, such as "
            f"{folder.rstrip('/')}/*/*"
        )


def _expand_local(p: str) -> list[str]:
    if os.path.isdir(p):
        entries = sorted(Path(p).iterdir())
        files = [str(f) for f in entries if f.is_file() and not _ignored(f.name)]
        subfolders = [f.name for f in entries if f.is_dir() and not _ignored(f.name)]
        _check_not_only_subfolders(p, files, subfolders)
        return files
    if _has_magic(p):
        matched = _not_hidden(p, sorted(f for f in glob.glob(p) if os.path.isfile(f)))
        if not matched:
            raise ValueError(f"no file matches {p!r}")
        return matched
    if os.path.isfile(p):
        return [p]
    raise ValueError(f"no such file or directory: {p!r}")


def _expand_url(url: str) -> list[str]:
    import fsspec

    check_url_supported(url)  # s3:// without s3fs: a ValueError naming the URL
    fs, path = fsspec.core.url_to_fs(url)
    if fs.isdir(path):
        entries = [(e["name"].rstrip("/").rsplit("/", 1)[-1], e) for e in fs.ls(path, detail=True)]
        names = sorted(e["name"] for n, e in entries if e["type"] == "file" and not _ignored(n))
        subfolders = [n for n, e in entries if e["type"] == "directory" and not _ignored(n)]
        _check_not_only_subfolders(url, names, subfolders)
    elif _has_magic(path):
        names = _not_hidden(path, sorted(n for n in fs.glob(path) if fs.isfile(n)))
        if not names:
            raise ValueError(f"no file matches {url!r}")
    elif fs.isfile(path):
        return [url]
    else:
        raise ValueError(f"no such file or directory: {url!r}")
    return [fs.unstrip_protocol(n) for n in names]


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _ignored(name: str) -> bool:
    return name.startswith((".", "_"))


def _not_hidden(pattern: str, matches: list[str]) -> list[str]:
    """The ``matches`` of glob ``pattern`` in which no name that a wildcard matched is
    ignored (``.*``, ``_*``), as in a folder's listing: ``data/*`` skips Spark's
    ``_SUCCESS`` and ``.crc`` files and ``data/*/*`` its ``_temporary/`` folder; a
    pattern that itself starts a name with ``_`` or ``.`` (``data/_*``) keeps them."""
    wild = [(i, part) for i, part in enumerate(reversed(pattern.split("/"))) if _has_magic(part)]

    def kept(match: str) -> bool:
        names = match.split("/")[::-1]  # one name per part of the pattern, from the end
        return not any(_ignored(names[i]) and not part.startswith(names[i][0]) for i, part in wild)

    return [m for m in matches if kept(m)]


def split_files(files: Sequence[T], rank: int, world_size: int) -> tuple[list[T], bool]:
    """This rank's files and whether rows must be split too, as epochs were split before
    commit cf0b052 (positions saved then resume with it: :mod:`recis.io.position`).

    With at least ``world_size`` files, rank r reads files ``r, r + W, r + 2W, ...``
    whole. With fewer, every rank scans every file and keeps rows ``i`` with
    ``i % W == r`` (``i`` counts data rows over all files in order), so each row is
    read by exactly one rank either way.
    """
    if len(files) >= world_size:
        return list(files[rank::world_size]), False
    return list(files), True


@dataclass(frozen=True)
class Span:
    """A part of one data file to read: from reader position ``start`` (``{}``: the
    file's beginning) to ``end`` (``None``: the file's end).

    ``file`` is the file's index among all files. ``lo``/``hi`` are where the span
    starts and ends in the file's own ``unit``: ``"bytes"`` for plain text (a line
    belongs to the span its first byte lies in), ``"rows"`` for Parquet. A file that can
    only be read whole (``.gz``, or of unknown size) has unit ``"phases"``: its reader
    goes from ``start`` to the file's end and the span holds the records ``i`` (the
    record's 0-based line, or row, in the file) with ``lo <= i % modulus < hi``
    (``modulus`` 0: not laid out yet, every record). ``weight`` is the bytes it covers
    (estimated for Parquet rows; for phases, the file's compressed size times the
    fraction of phases), what :func:`balance_spans` shares out.
    """

    file: int
    start: dict[str, int]
    end: int | None
    lo: int = 0
    hi: int = 0
    weight: int = 0
    unit: str = "phases"
    modulus: int = 0

    @property
    def phases(self) -> list[int] | None:
        """``[modulus, lo, hi]`` when the span holds only some phases of its file's
        records, else None."""
        if self.unit != "phases" or self.modulus == 0 or self.hi - self.lo == self.modulus:
            return None
        return [self.modulus, self.lo, self.hi]

    def part(self, a: int, b: int) -> Span | None:
        """The part between ``a`` and ``b`` bytes into the span (``0 <= a < b <=
        weight``), or None when it is empty in the file's unit (a part of text may
        still hold no line: one that starts in it). A cut at ``x`` bytes falls at unit
        ``lo + (hi - lo) * x / weight`` rounded to the nearest, the same for the parts
        on both sides of it, so they meet exactly. A part of phases is read from the
        same start to the same end, keeping fewer phases."""
        if a == 0 and b == self.weight:
            return self
        lo, hi = self._unit_at(a), self._unit_at(b)
        if hi <= lo:
            return None
        if self.unit == "phases":
            return replace(self, lo=lo, hi=hi, weight=b - a)
        start = self.start if a == 0 else ({"from": lo} if self.unit == "bytes" else {"row": lo})
        end = self.end if b == self.weight else hi
        return replace(self, start=start, end=end, lo=lo, hi=hi, weight=b - a)

    def left_after(self, position: dict[str, int], expanded: int | None = None) -> int:
        """The bytes of :attr:`weight` still to read from reader ``position`` (``{}``:
        none read). A span of phases is read through its whole file, whose reader
        counts decompressed bytes: with ``expanded``, the file's size decompressed (an
        estimate), the part passed is ``offset / expanded``, at most 99% until the
        span is done; without it, all of the weight is left."""
        if self.unit == "phases":
            at = position.get("offset")
            if not expanded or at is None:
                return self.weight
            return self.weight - int(self.weight * min(at / expanded, 0.99))
        at = position.get("row") if self.unit == "rows" else position.get("offset")
        if self.unit == "bytes" and at is None:
            at = position.get("from")
        if at is None or self.hi <= self.lo:
            return self.weight
        done = min(max(at - self.lo, 0), self.hi - self.lo)
        return self.weight - self.weight * done // (self.hi - self.lo)

    def _unit_at(self, x: int) -> int:
        return self.lo + ((self.hi - self.lo) * x + self.weight // 2) // self.weight


def balance_spans(spans: Sequence[Span], world_size: int) -> list[list[Span]]:
    """Every rank's part of ``spans``, each about ``1 / world_size`` of their bytes.

    Files that can only be read whole (unit ``"phases"``) go first, heaviest first, each
    whole to the rank with the most room left, when it fits that room (to half a phase
    of it). The rest is laid end to end and cut where the ranks' rooms meet: plain text
    at bytes (lines), Parquet at rows (in proportion to its bytes; Parquet alone is
    shared by the rows its footers count), a file read whole into ``world_size``
    phases of its records (``i % world_size``), of which a rank whose room holds some
    reads all of the file and keeps its own. So plain text and Parquet of any sizes are
    cut in equal shares, ``.gz`` files go whole where they can, and the files left over
    are shared, as few as possible per rank. A file of unknown size counts as the mean
    of the others. Each rank's parts come in the order of ``spans``.

    Example::

        >>> gz = [Span(i, {}, None, weight=100) for i in range(3)]  # three .gz files
        >>> [[(s.file, s.lo, s.hi) for s in mine] for mine in balance_spans(gz, 2)]
        [[(0, 0, 2), (2, 0, 1)], [(1, 0, 2), (2, 1, 2)]]
    """
    laid = _lay_out(spans, world_size)
    total = sum(s.weight for s in laid)
    shares: list[list[Span]] = [[] for _ in range(world_size)]
    rooms = [(r + 1) * total // world_size - r * total // world_size for r in range(world_size)]
    most_room = [(-room, r) for r, room in enumerate(rooms)]
    heapq.heapify(most_room)
    placed = set()
    for k in sorted(range(len(laid)), key=lambda k: -laid[k].weight):  # stable among equals
        s = laid[k]
        room, r = -most_room[0][0], most_room[0][1]
        if s.unit == "phases" and 2 * (s.hi - s.lo) * (s.weight - room) <= s.weight:
            shares[r].append(s)
            placed.add(k)
            rooms[r] = room - s.weight
            heapq.heapreplace(most_room, (s.weight - room, r))
    rest = [s for k, s in enumerate(laid) if k not in placed]
    _cut(rest, [max(room, 0) for room in rooms], shares)
    order = {s.file: k for k, s in enumerate(laid)}
    return [sorted(mine, key=lambda s: (order[s.file], s.lo)) for mine in shares]


def _cut(spans: list[Span], rooms: list[int], shares: list[list[Span]]) -> None:
    """Lays ``spans`` end to end and adds to each rank's share the part of them that
    falls in its room (the rooms scaled to the spans' total, in rank order)."""
    total, room_total = sum(s.weight for s in spans), sum(rooms)
    if total == 0 or room_total == 0:
        return
    bounds = [total * x // room_total for x in itertools.accumulate(rooms, initial=0)]
    r, at = 0, 0
    for s in spans:
        if s.weight == 0:  # an empty file: nothing to read
            continue
        while bounds[r + 1] <= at:
            r += 1
        q = r
        while q < len(rooms) and bounds[q] < at + s.weight:
            a, b = max(bounds[q] - at, 0), min(bounds[q + 1] - at, s.weight)
            part = s.part(a, b) if a < b else None
            if part is not None:
                shares[q].append(part)
            q += 1
        at += s.weight


def _lay_out(spans: Sequence[Span], world_size: int) -> list[Span]:
    """``spans`` weighed for :func:`balance_spans` (by rows when all are Parquet; a file
    of unknown size as the mean), files read whole cut into ``world_size`` phases."""
    if spans and all(s.unit == "rows" for s in spans):
        return [replace(s, weight=s.hi - s.lo) for s in spans]
    known = [s.weight for s in spans if s.weight > 0]
    mean = sum(known) // len(known) if known else 1 << 20  # all unknown: any equal weight
    laid = []
    for s in spans:
        if s.unit == "phases":
            if s.modulus == 0:
                s = replace(s, lo=0, hi=world_size, modulus=world_size)
            if s.weight == 0:
                s = replace(s, weight=max(mean * (s.hi - s.lo) // s.modulus, 1))
        laid.append(s)
    return laid


def whole_file_warning(spans: Sequence[Span], shares: Sequence[Sequence[Span]]) -> str | None:
    """What sharing files that can only be read whole costs, when it is much: each rank
    whose share holds phases of such a file reads all of it. None when the reading
    comes to less than 1.1 times the data's bytes."""
    world_size = len(shares)
    laid = _lay_out(spans, world_size)
    whole = {s.file: s.weight * s.modulus // (s.hi - s.lo) for s in laid if s.unit == "phases"}
    if not whole:
        return None
    readers = Counter(p.file for mine in shares for p in mine if p.unit == "phases")
    total = sum(s.weight for s in laid)
    read = total + sum((readers[f] - 1) * w for f, w in whole.items() if readers[f] > 1)
    if read < 1.1 * total:
        return None
    shared = sum(1 for f in whole if readers[f] > 1)
    return (
        f"{len(whole)} of {len(spans)} data files can only be read whole (.gz, or of unknown "
        f"size); to give the ranks equal shares, {shared} of them are split between ranks "
        f"by lines (line % {world_size}), and each of those ranks reads through the whole "
        f"file for its own: the ranks read {read / total:.2f}x the data's bytes; plain text "
        "or Parquet files can be cut between the ranks without that"
    )
