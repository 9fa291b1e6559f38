"""Which part of the data each rank reads."""

from __future__ import annotations

import glob
import heapq
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch.distributed as dist

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
    and expands to URLs the readers open the same way. Hidden files (``.*``) and ``_*``
    files (Spark's ``_SUCCESS``) in directories are ignored. Raises ``ValueError`` when
    nothing matches.

    Example::

        >>> expand_paths("s3://bucket/criteo/day_*.tsv.gz")
        ['s3://bucket/criteo/day_0.tsv.gz', 's3://bucket/criteo/day_1.tsv.gz']
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for p in paths:
        p = os.fspath(p)
        files.extend(_expand_url(p) if "://" in p else _expand_local(p))
    if not files:
        raise ValueError(f"no data files in {list(paths)!r}")
    return files


def _expand_local(p: str) -> list[str]:
    if os.path.isdir(p):
        return [str(f) for f in sorted(Path(p).iterdir()) if f.is_file() and not _ignored(f.name)]
    if _has_magic(p):
        matched = sorted(glob.glob(p))
        if not matched:
            raise ValueError(f"no file matches {p!r}")
        return matched
    if os.path.isfile(p):
        return [p]
    raise ValueError(f"no such file or directory: {p!r}")


def _expand_url(url: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if fs.isdir(path):
        entries = fs.ls(path, detail=True)
        names = sorted(
            e["name"]
            for e in entries
            if e["type"] == "file" and not _ignored(e["name"].rstrip("/").rsplit("/", 1)[-1])
        )
    elif _has_magic(path):
        names = sorted(n for n in fs.glob(path) if fs.isfile(n))
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


def split_files(files: Sequence[T], rank: int, world_size: int) -> tuple[list[T], bool]:
    """This rank's files and whether rows must be split too.

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
    belongs to the span its first byte lies in), ``"rows"`` for Parquet, ``""`` for a
    file that can only be read whole (``.gz``, or of unknown size). ``weight`` is the
    bytes it covers (estimated for Parquet rows; a whole file's compressed size), what
    :func:`balance_spans` shares out.
    """

    file: int
    start: dict[str, int]
    end: int | None
    lo: int = 0
    hi: int = 0
    weight: int = 0
    unit: str = ""

    def part(self, a: int, b: int) -> Span | None:
        """The part between ``a`` and ``b`` bytes into the span (``0 <= a < b <=
        weight``), or None when it is empty in the file's unit (a part of text may
        still hold no line: one that starts in it). A cut at ``x`` bytes falls at unit
        ``lo + (hi - lo) * x / weight`` rounded to the nearest, the same for the parts
        on both sides of it, so they meet exactly."""
        if a == 0 and b == self.weight:
            return self
        lo, hi = self._unit_at(a), self._unit_at(b)
        if hi <= lo:
            return None
        start = self.start if a == 0 else ({"from": lo} if self.unit == "bytes" else {"row": lo})
        end = self.end if b == self.weight else hi
        return replace(self, start=start, end=end, lo=lo, hi=hi, weight=b - a)

    def _unit_at(self, x: int) -> int:
        return self.lo + ((self.hi - self.lo) * x + self.weight // 2) // self.weight


def deal_whole_files(spans: Sequence[Span], rank: int, world_size: int) -> tuple[list[Span], bool]:
    """This rank's spans, each read whole, and whether rows must be split too.

    With at least ``world_size`` spans, they are dealt by weight (see
    :func:`_whole_file_shares`). With fewer spans than ranks, every rank scans them all
    and keeps rows ``i % W == r``.
    """
    if len(spans) < world_size:
        return list(spans), True
    return _whole_file_shares(spans, world_size)[rank], False


def _whole_file_shares(spans: Sequence[Span], world_size: int) -> list[list[Span]]:
    """Every rank's spans: the heaviest first, each to the rank with the least so far
    (the lowest rank on a tie), so that the shares come out as equal as whole files
    allow; each rank reads its own in file order. A span of unknown size (weight 0)
    counts as the mean of the others."""
    known = [s.weight for s in spans if s.weight > 0]
    unknown = sum(known) // len(known) if known else 1
    weights = [s.weight or unknown for s in spans]
    loads = [(0, r) for r in range(world_size)]  # a heap of (load, rank)
    owners: list[list[int]] = [[] for _ in range(world_size)]
    for k in sorted(range(len(spans)), key=lambda k: (-weights[k], k)):
        load, r = heapq.heappop(loads)
        owners[r].append(k)
        heapq.heappush(loads, (load + weights[k], r))
    return [[spans[k] for k in sorted(mine)] for mine in owners]


def whole_file_warning(spans: Sequence[Span], world_size: int) -> str | None:
    """What reading ``spans`` dealt as whole files costs, when some can only be read
    whole and the ranks' shares come out unequal; None when they do not."""
    whole = [s for s in spans if not s.unit]
    if not whole:
        return None
    what = (
        f"{len(whole)} of {len(spans)} data files can only be read whole (.gz, or of unknown size)"
    )
    advice = "plain text or Parquet files of known size can be cut between the ranks"
    if len(spans) < world_size:
        return (
            f"{what} and there are {world_size} ranks: every rank reads all of them and "
            f"keeps one record in {world_size}; {advice}, or use at least {world_size} files"
        )
    shares = [sum(s.weight for s in mine) for mine in _whole_file_shares(spans, world_size)]
    total = sum(shares)
    if total == 0 or min(shares) >= 0.9 * max(shares):
        return None
    unread = 1 - world_size * min(shares) / total
    return (
        f"{what}, so the ranks' shares run from {min(shares) / 2**20:.1f} MiB to "
        f"{max(shares) / 2**20:.1f} MiB on disk: an epoch ends when the smallest runs out, "
        f"leaving about {unread:.0%} of its records unread; {advice}, or use a multiple of "
        f"{world_size} files of similar size"
    )


def balance_spans(spans: Sequence[Span], rank: int, world_size: int) -> tuple[list[Span], bool]:
    """This rank's part of ``spans`` and whether rows must be split too.

    When every span can be cut (plain text, Parquet), the spans are laid end to end
    and rank r takes bytes ``[r * T // W, (r + 1) * T // W)`` of their ``T``, cutting
    spans where the shares meet: every rank reads about the same amount, whatever the
    number and sizes of the files. With any span that can only be read whole (``.gz``),
    the spans are dealt as whole files by :func:`deal_whole_files`. Parquet alone is
    shared by rows, which its footers count exactly, instead of bytes.
    """
    if spans and all(s.unit == "rows" for s in spans):
        spans = [replace(s, weight=s.hi - s.lo) for s in spans]
    total = sum(s.weight for s in spans)
    if total == 0 or any(not s.unit for s in spans):
        return deal_whole_files(spans, rank, world_size)
    lo, hi = rank * total // world_size, (rank + 1) * total // world_size
    mine: list[Span] = []
    at = 0
    for s in spans:
        a, b = max(lo - at, 0), min(hi - at, s.weight)
        part = s.part(a, b) if a < b else None
        if part is not None:
            mine.append(part)
        at += s.weight
    return mine, False
