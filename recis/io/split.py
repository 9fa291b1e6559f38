"""Which part of the data each rank reads."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
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
