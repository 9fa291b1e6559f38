"""Reads the part of a saved table that one shard now owns (resharding on load).

A shard owns a box (rows ``[r0, r1)`` x columns ``[c0, c1)``) of the global table.
Every saved piece that overlaps the box contributes exactly the overlapping rows,
read from its file (only the checksum blocks holding them), then narrowed to the
overlapping columns. So a checkpoint saved on N ranks with one placement loads on
M ranks with any other, and each rank reads only the rows it owns. (Storage is
row-major: a shard that owns a column range reads the whole width of the saved
pieces over its rows, then keeps its columns.)

State kinds:

- ``element`` (weights, Adagrad/Adam moments): copied element by element.
- ``row`` (one value per row of a shard, e.g. RowWiseAdagrad's sum of mean squared
  gradients): a saved value belongs to a row *and* to the column range of the shard
  that kept it. When the new shard's columns span several saved column ranges, its
  value is their average weighted by how many of its columns each covers — exact when
  the new columns are a union of the old ranges (mean of means over equal weights),
  and the best estimate from the saved values when a saved range is split. Integer
  per-row state is not averaged: it comes from the saved range covering most columns.
- ``scalar`` (e.g. Adam's step count): one value per table, the same on every shard.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from recis.framework.checkpoint.layout import ELEMENT, ROW, SCALAR
from recis.framework.checkpoint.tensor_file import ReaderCache

Box = tuple[int, int, int, int]


def _run(task: Callable[[], None]) -> None:
    task()


def _overlap(a: tuple[int, int], b: list[int]) -> tuple[int, int] | None:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if hi > lo else None


class TableReader:
    """Assembles state tensors of one table for one box from a checkpoint's pieces.

    Per-element reads are planned first (:meth:`plan_element` returns the tensor
    and the read tasks) so that a caller can run the tasks of all tables at once on
    its writer-count thread pool; :meth:`read` does it all for one tensor.
    """

    def __init__(self, cache: ReaderCache, name: str, entry: dict[str, Any]):
        self.cache, self.name, self.entry = cache, name, entry
        self.planned_bytes = 0  # what the tasks of plan_element read

    def kind(self, key: str) -> str:
        return self.entry["state"][key]

    def read(
        self,
        key: str,
        box: Box,
        dtype: torch.dtype | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> Tensor:
        """State ``key`` for ``box`` (shaped ``[rows, cols]``, ``[rows]`` or ``[]``)."""
        kind = self.kind(key)
        if kind == SCALAR:
            ref = self.entry.get("scalars", {}).get(key)
            if ref is None:
                raise ValueError(f"table {self.name!r}: checkpoint has no value of scalar {key!r}")
            value = self.cache.read(ref).clone()
        elif kind == ELEMENT:
            value, tasks = self.plan_element(key, box)
            list(pool.map(_run, tasks) if pool is not None else map(_run, tasks))
        elif kind == ROW:
            value = self._read_row(key, box)
        else:
            raise ValueError(f"table {self.name!r}: unknown state kind {kind!r} of {key!r}")
        return value if dtype is None else value.to(dtype)

    def _overlapping(self, key: str, rows: tuple[int, int], cols: tuple[int, int]):
        for piece in self.entry["pieces"]:
            orow, ocol = _overlap(rows, piece["rows"]), _overlap(cols, piece["cols"])
            if orow and ocol:
                if key not in piece["tensors"]:
                    raise ValueError(f"table {self.name!r}: a saved piece lacks state {key!r}")
                yield piece, orow, ocol

    def _fetch(self, key: str, piece: dict[str, Any], orow: tuple[int, int], out=None) -> Tensor:
        p0 = piece["rows"][0]
        return self.cache.read(piece["tensors"][key], (orow[0] - p0, orow[1] - p0), out)

    def plan_element(
        self, key: str, box: Box, out: Tensor | None = None
    ) -> tuple[Tensor, list[Callable[[], None]]]:
        """``(tensor, tasks)``: running every task fills ``tensor`` with per-element
        state ``key`` of ``box``. ``tensor`` is ``out`` when that is a contiguous CPU
        tensor of the box's shape (e.g. the table's own weight): rows stored at full
        width and in the same dtype are then read straight into it."""
        r0, r1, c0, c1 = box
        jobs = list(self._overlapping(key, (r0, r1), (c0, c1)))
        covered = sum((orow[1] - orow[0]) * (ocol[1] - ocol[0]) for _, orow, ocol in jobs)
        if covered != (r1 - r0) * (c1 - c0):
            raise ValueError(
                f"table {self.name!r}: the checkpoint's pieces cover {covered} of the "
                f"{(r1 - r0) * (c1 - c0)} elements of rows [{r0}, {r1}) x cols [{c0}, {c1}) "
                f"of {key!r}"
            )
        if out is None or out.device.type != "cpu" or not out.is_contiguous():
            saved = self.cache.dtype(jobs[0][0]["tensors"][key]) if jobs else torch.float32
            out = torch.empty(r1 - r0, c1 - c0, dtype=saved)
        target = out.view(r1 - r0, c1 - c0)
        for piece, orow, _ in jobs:  # whole rows of each piece are read
            width = piece["cols"][1] - piece["cols"][0]
            itemsize = self.cache.dtype(piece["tensors"][key]).itemsize
            self.planned_bytes += (orow[1] - orow[0]) * width * itemsize

        def task(piece: dict[str, Any], orow: tuple[int, int], ocol: tuple[int, int]) -> None:
            dest = target[orow[0] - r0 : orow[1] - r0]
            ref = piece["tensors"][key]
            if list(ocol) == list(piece["cols"]) == [c0, c1] and self.cache.dtype(ref) == out.dtype:
                self._fetch(key, piece, orow, dest)
            else:
                src = self._fetch(key, piece, orow)
                pc0 = piece["cols"][0]
                dest[:, ocol[0] - c0 : ocol[1] - c0] = src[:, ocol[0] - pc0 : ocol[1] - pc0]

        return out, [functools.partial(task, *job) for job in jobs]

    def _read_row(self, key: str, box: Box) -> Tensor:
        r0, r1, c0, c1 = box
        jobs = list(self._overlapping(key, (r0, r1), (c0, c1)))
        sources = [self._fetch(key, piece, orow) for piece, orow, _ in jobs]
        if not jobs:
            if r1 == r0:
                return torch.empty(0)
            raise ValueError(f"table {self.name!r}: no saved piece holds {key!r} for {box}")
        dtype = sources[0].dtype
        if dtype.is_floating_point:
            acc = torch.zeros(r1 - r0, dtype=torch.float64)
            weight = torch.zeros(r1 - r0, dtype=torch.float64)
            for (_, orow, ocol), src in zip(jobs, sources, strict=True):
                width = ocol[1] - ocol[0]
                acc[orow[0] - r0 : orow[1] - r0] += src.double() * width
                weight[orow[0] - r0 : orow[1] - r0] += width
            if bool((weight == 0).any()) and r1 > r0:
                raise ValueError(f"table {self.name!r}: saved pieces miss rows of {key!r}")
            return (acc / weight).to(dtype)
        out = torch.empty(r1 - r0, dtype=dtype)
        best = torch.zeros(r1 - r0, dtype=torch.int64)
        for (_, orow, ocol), src in zip(jobs, sources, strict=True):
            width = ocol[1] - ocol[0]
            sl = slice(orow[0] - r0, orow[1] - r0)
            take = best[sl] < width
            out[sl] = torch.where(take, src, out[sl])
            best[sl] = torch.where(take, torch.full_like(best[sl], width), best[sl])
        if bool((best == 0).any()):
            raise ValueError(f"table {self.name!r}: saved pieces miss rows of {key!r}")
        return out
