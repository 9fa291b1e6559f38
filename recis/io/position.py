"""A :class:`~recis.io.CriteoDataset` read position: where a rank is in its epoch, and
how the positions of every saved rank become new ones on another number of ranks.

A position is a dict of plain ints and lists (it goes into checkpoints as JSON):
``epoch``; ``work``, the parts of files this rank reads this epoch as ``[[index in all
files, start position, end], ...]``, with a fourth element ``[modulus, lo, hi]`` for
a file read whole of which the rank keeps some phases of the records (see
:class:`recis.io.split.Span`; None at the start of an epoch, before the epoch is dealt
out; a work item may also be a window item, see :mod:`recis.io.shuffle`), with
``split_rows`` and ``consumed`` (a row split of every file, from positions of format 2
or older: see :func:`reshard`); ``file``, the work item being read and
``position``, the reader's resume point in it; ``record``, the records scanned this
epoch (the row split's index); ``malformed``, the records skipped so far; ``window``,
where the shuffle window being handed out started (None outside one);
``file_order_seed``, whence the order of the files of an epoch not dealt out yet
(None: their own order; see :func:`file_order`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recis.io.shuffle import is_window, segment, split_window, window_rest
from recis.io.split import split_files

Position = dict[str, Any]
# 4: shuffle windows: "window" (a position inside one) and window items (what a resize
# left of one); "file_order_seed", the order of the files in an epoch not dealt yet.
# 3: files read whole are shared between ranks by phases of their records (work items
# of 4 elements); a rank no longer splits the rows of every file with the others.
# 2: epochs shared out by bytes, each rank's work list kept in its position. A state
# without it was saved when epochs were dealt as whole files (recis before commit cf0b052).
POSITION_FORMAT = 4
WorkItem = list[Any]  # [index in all files, start position, end or None(, phases)]
Deal = Callable[[list[WorkItem], int, int], list[WorkItem]]
"""``deal(items, rank, world_size)``: ``rank``'s share of ``items``
(:meth:`recis.io.CriteoDataset._deal`)."""


def epoch_start(epoch: int, malformed: int, file_order_seed: int | None = None) -> Position:
    """The position at the start of ``epoch``, split the usual way: the files laid out
    in their order, or in one drawn from ``file_order_seed`` and the epoch."""
    return {
        "epoch": epoch,
        "work": None,
        "split_rows": False,
        "consumed": [],
        "file": 0,
        "position": {},
        "record": 0,
        "malformed": malformed,
        "window": None,
        "file_order_seed": file_order_seed,
    }


def read_position(state: dict[str, Any]) -> Position:
    """The position fields of a saved state, as plain ints.

    A state of an older format without a work list had its epoch dealt as whole files
    (see :data:`POSITION_FORMAT`), which this re-derives, so that it resumes, alone or
    with its peers, on the split they were saved under.
    """
    work = state.get("work")
    split_rows = bool(state.get("split_rows", False))
    seed = state.get("file_order_seed")
    if work is None and "position_format" not in state:
        files, split_rows = split_files(
            range(int(state["num_files"])), int(state["rank"]), int(state["world_size"])
        )
        work = [[i, {}, None] for i in files]
    return {
        "epoch": int(state["epoch"]),
        "work": None if work is None else [_work_item(w) for w in work],
        "split_rows": split_rows,
        "consumed": [[int(w), [int(r) for r in rs]] for w, rs in state.get("consumed", [])],
        "file": int(state["file"]),
        "position": _ints(state["position"]),
        "record": int(state["record"]),
        "malformed": int(state["malformed"]),
        "window": _window_position(state.get("window")),
        "file_order_seed": None if seed is None else int(seed),
    }


def epoch_work(
    position: Position, num_files: int, rank: int, world_size: int, deal: Deal
) -> tuple[list[WorkItem], bool]:
    """The work items of ``rank``'s epoch at ``position`` and whether their rows are
    split over the ranks (format 2 or older): the position's own, else the epoch dealt
    out afresh."""
    if position["work"] is None:
        order = file_order(num_files, position["epoch"], position["file_order_seed"])
        return deal([[i, {}, None] for i in order], rank, world_size), False
    return [list(w) for w in position["work"]], position["split_rows"]


def file_order(num_files: int, epoch: int, seed: int | None) -> list[int]:
    """The order in which an epoch lays out its files: theirs, or (``seed`` given) a
    permutation drawn from ``seed`` and ``epoch``, another each epoch."""
    if seed is None:
        return list(range(num_files))
    return np.random.default_rng([seed, epoch]).permutation(num_files).tolist()


def keep_rows(
    index: np.ndarray, rank: int, world_size: int, consumed: list[list[Any]]
) -> np.ndarray:
    """Which records (by index in the epoch's scan) are ``rank``'s under a row split:
    every ``world_size``-th, less those a saved rank read before a resize."""
    keep = index % world_size == rank
    for world, records in consumed:
        keep &= index >= np.asarray(records, dtype=np.int64)[index % world]
    return keep


def reshard(
    states: Sequence[dict[str, Any]], num_files: int, rank: int, world_size: int, deal: Deal
) -> Position:
    """``rank``'s position on ``world_size`` ranks from the state of every saved rank,
    so that each record the saved ranks had not read of their epoch is read once.

    What the saved ranks had not read (each work item from where its rank stopped, with
    its phases) is dealt out again by ``deal``, as an epoch is (a file read whole is
    shared at the phases of its item); of what a shuffle window had not handed out, and
    of each window item left, every new rank takes an equal part. When the saved ranks
    split rows (positions of format 2 or older), the new ranks scan on from the
    earliest of their positions and skip the records a saved rank had read
    (``consumed``: record ``i`` is skipped when ``i < records[i % world]`` for a saved
    ``[world, records]``). A rank still in an earlier epoch has read nothing of the
    latest one; one that had not started it is dealt it as it would have been.
    """
    saved = sorted((read_position(s) | {"rank": int(s["rank"])} for s in states), key=_rank)
    old_world = int(states[0]["world_size"]) if states else 0
    if [s["rank"] for s in saved] != list(range(old_world)) or any(
        int(s["world_size"]) != old_world for s in states
    ):
        raise ValueError(
            "CriteoDataset: resharding a read position needs the state of every saved "
            f"rank, got ranks {[s['rank'] for s in saved]} of world_size {old_world}"
        )
    epoch = max(s["epoch"] for s in saved)
    saved = [
        s
        if s["epoch"] == epoch
        else epoch_start(epoch, 0, s["file_order_seed"]) | {"rank": s["rank"]}
        for s in saved
    ]
    works = [epoch_work(s, num_files, r, old_world, deal) for r, s in enumerate(saved)]
    position = epoch_start(epoch, sum(s["malformed"] for s in saved) if rank == 0 else 0)
    if works[0][1]:
        # The saved ranks split the rows of one scan: go on from the earliest position;
        # the records between it and each rank's own were read by that rank.
        first = min(saved, key=lambda s: s["record"])
        position.update(
            work=works[0][0],
            split_rows=True,
            consumed=[
                *(c for c in first["consumed"] if max(c[1]) > first["record"]),
                [old_world, [s["record"] for s in saved]],
            ],
            file=first["file"],
            position=first["position"],
            record=first["record"],
        )
    else:
        windows, left = [], []
        batch_size = {int(s["rank"]): int(s["batch_size"]) for s in states}
        for (work, _), s in zip(works, saved, strict=True):
            if s["window"] is not None:  # inside a shuffle window: its records not handed out
                windows.append(window_rest(work, s, batch_size[s["rank"]]))
            for k in range(s["file"], len(work)):
                item = segment(work[k], s["position"] if k == s["file"] else {}, {})
                (windows if is_window(item) else left).append(item)
        # In file order; the parts of one file stay in rank order (the sort is stable).
        left.sort(key=lambda item: item[0])
        mine = [split_window(w, rank, world_size) for w in windows]
        position.update(work=[*(w for w in mine if w is not None), *deal(left, rank, world_size)])
    return position


def _rank(state: dict[str, Any]) -> int:
    return state["rank"]


def _work_item(item: Sequence[Any]) -> WorkItem:
    if is_window(item):  # type: ignore[arg-type]
        window = item[1]
        return [
            "window",
            {
                "items": [_work_item(i) for i in window["items"]],
                "key": [int(k) for k in window["key"]],
                "records": int(window["records"]),
                "from": int(window["from"]),
                "to": int(window["to"]),
            },
        ]
    # [index, start] items (format 1, after a resize) read to the end of their file.
    end = item[2] if len(item) > 2 else None
    phases = [[int(p) for p in item[3]]] if len(item) > 3 else []
    return [int(item[0]), _ints(item[1]), None if end is None else int(end), *phases]


def _window_position(window: dict[str, Any] | None) -> dict[str, Any] | None:
    if window is None:
        return None
    start = window["start"]
    return {
        "start": {
            "file": int(start["file"]),
            "position": _ints(start["position"]),
            "record": int(start["record"]),
            "malformed": int(start["malformed"]),
        },
        "key": [int(k) for k in window["key"]],
        "batches": int(window["batches"]),
        "records": int(window["records"]),
        "emitted": int(window["emitted"]),
    }


def _ints(position: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in dict(position).items()}
