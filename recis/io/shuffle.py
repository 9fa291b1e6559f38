"""Shuffling a rank's records in windows of batches, resumably and reshardably.

A rank reads its records in order; with a window of ``K`` batches, each run of ``K``
batches (``K * batch_size`` records) is permuted by a generator seeded with the
window's key (the seed, the epoch, the rank, and where the window starts) and handed
out as ``K`` batches of the same sizes. A position inside a window (``"window"``: where
the window starts in the ordered stream, its key, its size in batches and the batches
handed out) resumes by reading the window again and permuting it the same way, with the
same batch size and window size (:meth:`recis.io.CriteoDataset.load_state_dict`
checks).

When the world size changes mid-window, the window's records not yet handed out
become a *window item* of the new ranks' work: ``["window", {"items": [...], "key":
[...], "records": n, "from": a, "to": b}]``, the ``n`` records of ``items`` (work
items, window items among them) in order, permuted by ``key``, ``[a:b]`` of them.
Each new rank takes an equal part of each such item (reading the whole window for
it: a window is small).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from recis.io.criteo import ParsedRows

State = dict[str, Any]
Rows = Callable[[State], Iterator[tuple[ParsedRows | None, State]]]
"""``rows(start)``: the ordered stream from ``start``: (rows of a batch, position after
it), then ``(None, final position)``."""


def is_window(item: list[Any]) -> bool:
    """Whether work ``item`` is a window item."""
    return item[0] == "window"


def permuted(rows: ParsedRows, key: list[int]) -> ParsedRows:
    """``rows`` in the order of a permutation drawn from a generator seeded by ``key``."""
    order = np.random.default_rng(key).permutation(len(rows[0]))
    return tuple(a[order] for a in rows)  # type: ignore[return-value]


def shuffle_windows(
    rows: Rows, start: State, window_batches: int, key: Callable[[State], list[int]]
) -> Iterator[tuple[ParsedRows | None, State]]:
    """The stream of ``rows`` from ``start``, permuted in windows of ``window_batches``
    batches; ``key(position)`` is the key of the window that starts at that position
    of the ordered stream. A position inside a window carries ``"window"``."""
    window = start.get("window")
    at = {**start, **window["start"], "window": None} if window else start
    skip, window_key = (window["emitted"], window["key"]) if window else (0, key(at))
    stream = rows(at)
    while True:
        batches: list[tuple[ParsedRows, State]] = []
        final = None
        for chunk, state in stream:
            if chunk is None:
                final = state
                break
            batches.append((chunk, state))
            if len(batches) == window_batches:
                break
        if batches:
            columns = zip(*(chunk for chunk, _ in batches), strict=True)
            mixed = permuted(tuple(np.concatenate(c) for c in columns), window_key)  # type: ignore[arg-type]
            end = batches[-1][1]
            first = {k: at[k] for k in ("file", "position", "record", "malformed")}
            offset = 0
            for j, (chunk, _) in enumerate(batches, 1):
                n = len(chunk[0])
                offset += n
                if j > skip:
                    inside = None
                    if j < len(batches):
                        inside = {
                            "start": first,
                            "key": window_key,
                            "batches": window_batches,
                            "records": len(mixed[0]),
                            "emitted": j,
                        }
                    piece = tuple(a[offset - n : offset] for a in mixed)
                    yield piece, {**end, "window": inside}  # type: ignore[misc]
            skip, at = 0, end
            window_key = key(at)
        if final is not None:
            yield None, {**final, "window": None}
            return


def segment(item: list[Any], begin: dict[str, int], stop: dict[str, int]) -> list[Any]:
    """The part of work ``item`` from reader position ``begin`` (``{}``: its start) to
    position ``stop``, the one after a record (``{}``: its end)."""
    if is_window(item):
        window = item[1]
        first = window["from"] + begin.get("taken", 0)
        last = window["from"] + stop["taken"] if stop else window["to"]
        return ["window", {**window, "from": first, "to": last}]
    index, start, end, *phases = item
    if stop:
        end = stop["offset"] if "offset" in stop else stop["row"]
    return [index, begin or start, end, *phases]


def window_rest(work: list[list[Any]], position: State, batch_size: int) -> list[Any]:
    """The window item of what the shuffle window ``position`` is inside of had not
    handed out: the work it read, from where it started to where it ended (the
    position's own place in ``work``), less its first ``emitted`` batches."""
    window = position["window"]
    first = window["start"]
    items = [
        segment(
            work[k],
            first["position"] if k == first["file"] else {},
            position["position"] if k == position["file"] else {},
        )
        for k in range(first["file"], min(position["file"] + 1, len(work)))
    ]
    records, handed_out = window["records"], window["emitted"] * batch_size
    rest = {"items": items, "key": window["key"], "records": records, "from": handed_out}
    return ["window", {**rest, "to": records}]


def split_window(item: list[Any], part: int, parts: int) -> list[Any] | None:
    """Part ``part`` of ``parts`` equal parts of window ``item``'s records (None when
    empty): each new rank takes one, so that the ranks' shares stay equal; each reads
    the whole window for it."""
    window = item[1]
    first, count = window["from"], window["to"] - window["from"]
    lo, hi = first + part * count // parts, first + (part + 1) * count // parts
    return ["window", {**window, "from": lo, "to": hi}] if lo < hi else None
