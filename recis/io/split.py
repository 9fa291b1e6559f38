"""Which part of the data each rank reads."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist


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

    Hidden files (``.*``) and ``_*`` files (Spark's ``_SUCCESS``) in directories are
    ignored. Raises ``ValueError`` when nothing matches.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            files.extend(
                str(f)
                for f in sorted(Path(p).iterdir())
                if f.is_file() and not f.name.startswith((".", "_"))
            )
        elif any(c in p for c in "*?["):
            matched = sorted(glob.glob(p))
            if not matched:
                raise ValueError(f"no file matches {p!r}")
            files.extend(matched)
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise ValueError(f"no such file or directory: {p!r}")
    if not files:
        raise ValueError(f"no data files in {list(paths)!r}")
    return files


def split_files(files: Sequence[str], rank: int, world_size: int) -> tuple[list[str], bool]:
    """This rank's files and whether rows must be split too.

    With at least ``world_size`` files, rank r reads files ``r, r + W, r + 2W, ...``
    whole. With fewer, every rank scans every file and keeps rows ``i`` with
    ``i % W == r`` (``i`` counts data rows over all files in order), so each row is
    read by exactly one rank either way.
    """
    if len(files) >= world_size:
        return list(files[rank::world_size]), False
    return list(files), True
