"""CriteoDataset: batches of Criteo text/CSV/Parquet files, split over ranks, resumable."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from recis.framework.checkpoint.load import load_without
from recis.framework.progress import Progress
from recis.io.batch import Batch, rows_to_batch
from recis.io.criteo import NUM_DENSE, NUM_SPARSE, ParsedRows, RecordParser, resolve_table_sizes
from recis.io.position import (
    POSITION_FORMAT,
    WorkItem,
    epoch_start,
    epoch_work,
    keep_rows,
    read_position,
    reshard,
)
from recis.io.prefetch import prefetch
from recis.io.readers import (
    FORMATS,
    ParsedBlock,
    Record,
    expanded_size,
    measure,
    open_reader,
)
from recis.io.shuffle import is_window, permuted, shuffle_windows
from recis.io.split import (
    Span,
    balance_spans,
    expand_paths,
    files_digest,
    resolve_rank,
    whole_file_warning,
)

logger = logging.getLogger(__name__)

# Files measured at once when an epoch is shared out.
MEASURE_THREADS = 16


class CriteoDataset:
    """Batches of Criteo records, each rank reading its own part; exactly resumable.

    Reads Criteo Kaggle/1TB TSV (``label \\t I1..I13 \\t C1..C26``, no header),
    CSV (with or without the ``label,I1,..,C26`` header; ``.gz`` too) and Parquet
    with those column names, from local paths or fsspec URLs (files, folders, globs:
    see :func:`recis.io.split.expand_paths`). See :mod:`recis.io.criteo` for how
    values become model inputs (missing categoricals are empty bags unless
    ``missing_id``).

    Each rank reads an equal share of the bytes: plain text and Parquet files are laid
    end to end and cut where the ranks' shares meet (at a line, at a row), so one big
    file, or files of any sizes, is read once over the ranks in equal parts (see
    :func:`recis.io.split.balance_spans`). Files that can only be read whole (``.gz``,
    or of unknown size) go whole to ranks where they fit; the ranks that share one
    left over each read all of it and keep the lines ``i % world_size`` of their share
    (passing over the others unparsed; rank 0 warns when that reading costs much).
    ``rank``/``world_size`` default to the initialised process group. Every rank must
    be given the same files and options: :meth:`shared_setup` says which
    (``Trainer.train()`` checks that the ranks agree).

    Iterating yields batches ``{"dense": [B, 13], "sparse": KJT C1..C26, "label": [B]}``
    from the current read position to the end of this rank's data; the last batch
    may be smaller unless ``drop_last``. The next iteration starts the next epoch.
    ``state_dict()`` is the position after the last batch handed out, so
    ``load_state_dict`` (before iterating) makes the next batch exactly the one
    that would have come next; on another number of ranks,
    ``load_resharded_state_dict`` resumes the epoch from every saved rank's state. A
    ``prefetch`` > 0 reads that many batches ahead on a thread.

    ``shuffle_window=K`` permutes each rank's records in windows of ``K`` batches
    (``K * batch_size`` records held at once, about 320 bytes each, twice), seeded by
    ``seed``, the epoch, the rank and the window's place, and lays the files out in an
    order drawn from ``seed`` and the epoch before they are shared out (so each epoch
    a rank reads other files, or other parts of them): the same seed gives the same
    order, each epoch another. A position inside a window resumes exactly (the window
    is read again; same ``batch_size`` and ``shuffle_window`` needed), and on another
    number of ranks each new rank takes an equal part of every window's records not
    yet handed out (see :mod:`recis.io.shuffle`). 0, the default, reads in file order.

    A malformed record raises ``ValueError`` naming its file and line, or, with
    ``skip_malformed=True``, is skipped and counted in :attr:`num_malformed` (a
    warning at the end of an epoch that skipped any gives the count and the first).

    Example::

        >>> ds = CriteoDataset("day_0.tsv", batch_size=4096, table_sizes=100_000,
        ...                    shuffle_window=16)
        >>> for batch in ds:
        ...     loss = model(batch)
        >>> state = ds.state_dict()  # save with the checkpoint (per rank)
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        batch_size: int,
        table_sizes: int | Sequence[int] | None = None,
        *,
        format: str = "auto",
        drop_last: bool = False,
        missing_id: int | None = None,
        skip_malformed: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch: int = 2,
        shuffle_window: int = 0,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if shuffle_window < 0:
            raise ValueError(f"shuffle_window must be >= 0 batches, got {shuffle_window}")
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
        self.batch_size = batch_size
        self.format = format
        self.drop_last = drop_last
        self.skip_malformed = skip_malformed
        self.prefetch = prefetch
        self.shuffle_window = shuffle_window
        self.seed = seed
        self.table_sizes = resolve_table_sizes(table_sizes)
        self._parser = RecordParser(self.table_sizes, missing_id)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.all_files = expand_paths(paths)
        self.files_digest = files_digest(self.all_files)
        self._state = epoch_start(0, 0, self._file_order_seed)
        self._active: Iterator[Batch] | None = None
        self._warned = False  # about files read whole: once per dataset
        self._whole_spans: dict[int, Span] = {}
        self._layout_digest: str | None = None  # files_layout_digest(), once measured
        self._dealt_spans: dict[str, Span] = {}  # this rank's work items, for epoch_progress
        self._expanded: dict[int, int | None] = {}  # .gz files' sizes decompressed, likewise
        self._first_malformed: str | None = None  # where and why, for the epoch's warning

    # -- position (recis.io.position) ---------------------------------------------
    @property
    def _file_order_seed(self) -> int | None:
        """Shuffling draws each epoch's order of the files too (from the seed)."""
        return self.seed if self.shuffle_window else None

    @property
    def epoch(self) -> int:
        return self._state["epoch"]

    @property
    def num_malformed(self) -> int:
        """Malformed records skipped so far (with ``skip_malformed=True``)."""
        return self._state["malformed"]

    def state_dict(self) -> dict[str, Any]:
        """The read position after the last batch handed out (plain ints, JSON-able)."""
        return {
            "position_format": POSITION_FORMAT,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_files": len(self.all_files),
            "files_digest": self.files_digest,
            **({"files_layout_digest": self._layout_digest} if self._layout_digest else {}),
            "batch_size": self.batch_size,
            **copy.deepcopy(self._state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes from :meth:`state_dict` of the same rank with the same files."""
        self._check_same_files(state)
        for key, mine in (("world_size", self.world_size), ("rank", self.rank)):
            if int(state[key]) != mine:
                raise ValueError(
                    f"CriteoDataset state was saved with {key}={state[key]} but this "
                    f"dataset has {key}={mine}: a read position resumes only on the same "
                    "rank layout (load_resharded_state_dict maps the states of every "
                    "saved rank to another world size)"
                )
        position = read_position(state)
        window = position["window"]
        if window is not None and (int(state["batch_size"]), window["batches"]) != (
            self.batch_size,
            self.shuffle_window,
        ):
            raise ValueError(
                f"CriteoDataset state of rank {self.rank} is inside a shuffle window of "
                f"{window['batches']} batches of {state['batch_size']}, which resumes only "
                f"with that shuffle_window and batch_size (this dataset: "
                f"{self.shuffle_window} and {self.batch_size})"
            )
        self.close()
        self._state = position

    def load_resharded_state_dict(
        self, states: Sequence[dict[str, Any]], rank: int, world_size: int
    ) -> None:
        """Resumes after a change of world size from the :meth:`state_dict` of every
        saved rank (a checkpoint loaded on another number of ranks calls this).

        This rank takes its share of what the saved ranks had left of their epoch, so
        that every record of that epoch is still read exactly once over the new ranks
        (see :func:`recis.io.position.reshard`). The next epoch is split as usual.
        """
        if (rank, world_size) != (self.rank, self.world_size):
            raise ValueError(
                f"CriteoDataset is rank {self.rank} of {self.world_size}, "
                f"asked to load as rank {rank} of {world_size}"
            )
        for saved in states:
            self._check_same_files(saved)
        state = reshard(states, len(self.all_files), rank, world_size, self._deal)
        self.close()
        self._state = state

    def files_layout_digest(self) -> str:
        """A fingerprint of the files as this rank sees them: :attr:`files_digest` and
        each file's size (bytes; rows and bytes of Parquet), measured as an epoch's
        start measures them (and kept for it). Every rank cuts the files into the
        ranks' shares by these sizes, so ranks that see other sizes (a node whose local
        copy of the data is partial or another day's) would read some records twice
        and others never (see :meth:`shared_setup`). Once measured, it is also saved
        with the read position, which then resumes only on files of those sizes."""
        if self._layout_digest is None:
            spans = self._measure([[i, {}, None] for i in range(len(self.all_files))])
            sizes = ",".join(f"{s.hi}:{s.weight}" for s in spans)
            digest = hashlib.sha1(f"{self.files_digest}|{sizes}".encode()).hexdigest()[:16]
            self._layout_digest = digest
        return self._layout_digest

    def shared_setup(self) -> dict[str, Any]:
        """What every rank's dataset must agree on for the ranks' shares to read each
        record once: the files (:meth:`files_layout_digest`), the batch size and the
        shuffling, with its seed (it draws each epoch's order of the files).
        ``Trainer.train()`` compares it across ranks, naming the first difference."""
        setup = {
            "files (a fingerprint of names, order, sizes)": self.files_layout_digest(),
            "batch_size": self.batch_size,
            "shuffle_window": self.shuffle_window,
        }
        if self.shuffle_window:
            setup["seed (it orders the files when shuffling)"] = self.seed
        return setup

    def epoch_progress(self) -> float | None:
        """How much of this rank's share of the current epoch has been handed out, from
        0 to 1, by bytes; None when unknown (no bytes to read).

        In a ``.gz`` file the reader's position is in decompressed bytes, weighed
        against the file's size decompressed as estimated from its first 4 MiB (read
        once, when the rank first gets to the file); what a resize left of a shuffle
        window is not counted. The first call after a resume stats the files of the
        rank's share.
        """
        work = self._state["work"]
        if work is None:  # not dealt out yet: nothing read
            return 0.0
        spans = self._spans_of([item for item in work if not is_window(item)])
        weights = [0 if is_window(item) else spans[_key(item)].weight for item in work]
        total = sum(weights)
        if total == 0:
            return None
        k = self._state["file"]
        left = sum(weights[k + 1 :])
        if k < len(work) and not is_window(work[k]):
            span = spans[_key(work[k])]
            expanded = self._expanded_size(span.file) if span.unit == "phases" else None
            left += span.left_after(self._state["position"], expanded)
        return 1.0 - left / total

    def _expanded_size(self, file: int) -> int | None:
        if file not in self._expanded:
            try:
                self._expanded[file] = expanded_size(self.all_files[file])
            except (OSError, EOFError, ValueError):  # progress never stops training
                self._expanded[file] = None
        return self._expanded[file]

    def _spans_of(self, items: list[WorkItem]) -> dict[str, Span]:
        """The spans of this rank's work ``items``, measured once."""
        missing = [item for item in items if _key(item) not in self._dealt_spans]
        if missing:
            for item, span in zip(missing, self._measure(missing), strict=True):
                self._dealt_spans[_key(item)] = span
        return self._dealt_spans

    def _check_same_files(self, state: dict[str, Any]) -> None:
        """Raises unless ``state`` was saved reading the files this dataset reads: a
        position is an index into the list of files and an offset in one of them."""
        saved, now = int(state["num_files"]), len(self.all_files)
        # States saved before files_digest existed are checked by the count alone, and
        # those saved without their files' sizes measured by the names.
        if saved != now:
            change = f"{saved} files then, {now} now"
        elif state.get("files_digest", self.files_digest) != self.files_digest:
            change = "other names or order"
        elif "files_layout_digest" in state and (
            state["files_layout_digest"] != self.files_layout_digest()
        ):
            change = "the same names, other sizes: replaced, or still being written?"
        else:
            return
        raise ValueError(
            f"CriteoDataset rank {self.rank}: the data files are not those the read "
            f"position of saved rank {state['rank']} was taken on ({change}), so it cannot "
            "be resumed on them. Resume on the same files, or load the checkpoint without "
            f"its read position: {load_without('io_state')}"
        )

    # -- iteration -----------------------------------------------------------------
    def _deal(self, items: list[WorkItem], rank: int, world_size: int) -> list[WorkItem]:
        """``rank``'s share of the work ``items`` (see :func:`recis.io.split.balance_spans`)."""
        spans = self._measure(items)
        shares = balance_spans(spans, world_size)
        # Warn about this layout only: a reshard also deals the saved ranks' epochs.
        if self.rank == 0 and world_size == self.world_size and not self._warned:
            warning = whole_file_warning(spans, shares)
            if warning is not None:
                logger.warning("CriteoDataset: %s", warning)
                self._warned = True
        work = [[s.file, s.start, s.end, *([s.phases] if s.phases else [])] for s in shares[rank]]
        if (rank, world_size) == (self.rank, self.world_size):
            self._dealt_spans = {_key(item): s for item, s in zip(work, shares[rank], strict=True)}
        return work

    def _measure(self, items: list[WorkItem]) -> list[Span]:
        """The spans of work ``items``, measured on threads (remote files take a request
        or two each); a whole file's is measured once per dataset."""

        def span(item: WorkItem) -> Span:
            i, start, end, *phases = item
            whole = not start and end is None and not phases
            if whole and i in self._whole_spans:
                return self._whole_spans[i]
            result = measure(self.all_files[i], self.format, i, start, end, *phases)
            if whole:
                self._whole_spans[i] = result
            return result

        if len(items) < 2:
            return [span(item) for item in items]
        spans = []
        what = "CriteoDataset: measuring the data files (sizes, Parquet footers)"
        progress = Progress(what, "measured", len(items), unit="files", log=self.rank == 0)
        with ThreadPoolExecutor(min(len(items), MEASURE_THREADS)) as pool:
            for result in pool.map(span, items):
                spans.append(result)
                progress.add(1)
        return spans

    def _parse(self, records: list[Record]) -> tuple[ParsedRows, int]:
        """Parses records, vectorised when they are well-formed, else one by one;
        returns the rows and how many records were malformed (and skipped)."""
        fast = self._parser.parse_many([fields for _, fields, _ in records])
        if fast is not None:
            return fast, 0
        labels, dense, ids = [], [], []
        for location, fields, _ in records:
            try:
                label, d, i = self._parser.parse(fields)
            except ValueError as e:
                if not self.skip_malformed:
                    raise ValueError(f"{location}: malformed record: {e}") from None
                if self._first_malformed is None:
                    self._first_malformed = f"{location}: {e}"
                continue
            labels.append(label)
            dense.append(d)
            ids.append(i)
        rows = (
            np.array(labels, dtype=np.float64),
            np.array(dense, dtype=np.float64).reshape(-1, NUM_DENSE),
            np.array(ids, dtype=np.int64).reshape(-1, NUM_SPARSE),
        )
        return rows, len(records) - len(labels)

    def _scan(self, start: dict[str, Any]) -> Iterator[_Scanned]:
        """This rank's records from ``start`` (its work dealt out already): raw records
        one by one, parsed ones in blocks, then the end."""
        work, split_rows = start["work"], start["split_rows"]
        consumed = start["consumed"]
        record = start["record"]
        for k in range(start["file"], len(work)):
            if is_window(work[k]):  # what a resize left of a shuffle window
                taken = start["position"].get("taken", 0) if k == start["file"] else 0
                rows = self._window_rows(work[k][1])
                rows = tuple(a[taken:] for a in rows)  # type: ignore[assignment]
                after = np.arange(taken + 1, taken + len(rows[0]) + 1, dtype=np.int64)
                block = ParsedBlock(rows, ("taken",), after[:, None])
                index = record + np.arange(len(block), dtype=np.int64)
                record += len(block)
                yield _Scanned(k, record, index + 1, block=block)
                continue
            file_index, first, end, *phases = work[k]
            position = start["position"] if k == start["file"] and start["position"] else first
            path = self.all_files[file_index]
            reader = open_reader(path, self.format, position or None, self._parser, end, *phases)
            for item in reader:
                if isinstance(item, ParsedBlock):
                    index = record + np.arange(len(item), dtype=np.int64)
                    record += len(item)
                    if split_rows:
                        keep = keep_rows(index, self.rank, self.world_size, consumed)
                        rows = tuple(a[keep] for a in item.rows)
                        item = ParsedBlock(rows, item.keys, item.positions[keep])  # type: ignore[arg-type]
                        index = index[keep]
                    yield _Scanned(k, record, index + 1, block=item)
                else:
                    index = np.array([record])
                    record += 1
                    if not split_rows or keep_rows(index, self.rank, self.world_size, consumed)[0]:
                        yield _Scanned(k, record, raw=item)
        yield _Scanned(len(work), record)

    def _window_rows(self, window: dict[str, Any]) -> ParsedRows:
        """The records of a window item (see :mod:`recis.io.shuffle`), parsed. Malformed
        ones are skipped uncounted: the rank that first read the window counted them."""
        parts: list[ParsedRows] = []
        raw: list[Record] = []
        for item in self._scan({**epoch_start(0, 0), "work": window["items"]}):
            if item.raw is not None:
                raw.append(item.raw)
                continue
            if raw:  # in their place among the parsed blocks
                parts.append(self._parse(raw)[0])
                raw = []
            if item.block is not None:
                parts.append(item.block.rows)
        rows = tuple(np.concatenate(c) for c in zip(*parts, strict=True)) if parts else _no_rows()
        if len(rows[0]) != window["records"]:
            files = sorted({self.all_files[i[0]] for i in window["items"] if not is_window(i)})
            raise ValueError(
                f"CriteoDataset rank {self.rank}: a shuffle window left by a resize holds "
                f"{window['records']} records but {len(rows[0])} were read again from "
                f"{files}: files must not change while a job runs"
            )
        return tuple(a[window["from"] : window["to"]] for a in permuted(rows, window["key"]))  # type: ignore[arg-type,return-value]

    def _produce(self, start: dict[str, Any]) -> Iterator[tuple[Batch | None, dict[str, Any]]]:
        """(batch, position after it) from ``start`` to the end of this rank's data,
        then ``(None, final state)``."""
        # A new epoch (no work list yet) is dealt out here: that reads the files' sizes.
        work, split_rows = epoch_work(
            start, len(self.all_files), self.rank, self.world_size, self._deal
        )
        start = {**start, "work": work, "split_rows": split_rows}
        if self.shuffle_window and not split_rows:
            rows = shuffle_windows(self._rows, start, self.shuffle_window, self._window_key)
        else:  # a row split of format 2 or older stays in order
            rows = self._rows(start)
        for chunk, state in rows:
            yield (None if chunk is None else rows_to_batch(*chunk)), state

    def _window_key(self, position: dict[str, Any]) -> list[int]:
        """The key of the shuffle window that starts at ``position`` of the ordered stream."""
        return [self.seed, position["epoch"], self.world_size, self.rank, position["record"]]

    def _rows(self, start: dict[str, Any]) -> Iterator[tuple[ParsedRows | None, dict[str, Any]]]:
        """The rows of each batch in file order and the position after it, from ``start``
        (its work dealt out already), then ``(None, final state)``."""
        epoch_fields = {k: start[k] for k in ("epoch", "work", "split_rows", "consumed")}
        malformed = start["malformed"]

        def state(file: int, position: dict[str, int], record: int) -> dict[str, Any]:
            # The epoch's fields are shared, never changed: state_dict() copies.
            return {
                **epoch_fields,
                "file": file,
                "position": dict(position),
                "record": record,
                "malformed": malformed,
            }

        parts: list[ParsedRows] = []
        have = 0
        pending: list[_Scanned] = []  # raw records not parsed yet

        def parse_pending() -> None:
            nonlocal have, malformed
            rows, bad = self._parse([p.raw for p in pending])  # type: ignore[misc]
            malformed += bad
            parts.append(rows)
            have += len(rows[0])

        def batch() -> ParsedRows:
            nonlocal parts, have
            columns = tuple(np.concatenate(c) for c in zip(*parts, strict=True))
            parts, have = [], 0
            return columns  # type: ignore[return-value]

        for item in self._scan(start):
            if item.raw is not None:
                # Parse just enough raw records to fill the batch (skipped malformed
                # ones leave a gap that the following records fill).
                pending.append(item)
                if have + len(pending) < self.batch_size:
                    continue
                last = pending[-1]
                parse_pending()
                pending = []
                if have == self.batch_size:
                    yield batch(), state(last.file, last.raw[2], last.record)  # type: ignore[index]
            elif item.block is not None:
                if pending:  # fewer than the batch needs: no cut among them
                    parse_pending()
                    pending = []
                block, i = item.block, 0
                while i < len(block):
                    take = min(self.batch_size - have, len(block) - i)
                    parts.append(tuple(a[i : i + take] for a in block.rows))  # type: ignore[arg-type]
                    have += take
                    i += take
                    if have == self.batch_size:
                        after = block.positions[i - 1].tolist()
                        record = int(item.block_records[i - 1])  # type: ignore[index]
                        position = dict(zip(block.keys, after, strict=True))
                        yield batch(), state(item.file, position, record)
            else:  # the end: the rest, then the final state (and count of skipped records)
                if pending:
                    parse_pending()
                final = state(item.file, {}, item.record)
                if have and not self.drop_last:
                    yield batch(), final
                yield None, final

    def __iter__(self) -> Iterator[Batch]:
        self.close()
        self._active = self._iterate()
        return self._active

    def _iterate(self) -> Iterator[Batch]:
        skipped_before = self._state["malformed"]
        for batch, state in prefetch(self._produce(self._state), self.prefetch):
            self._state = state
            if batch is not None:
                yield batch
        if self._state["malformed"] > skipped_before:
            logger.warning(
                "CriteoDataset rank %d: %d malformed records skipped by the end of epoch %d "
                "(the first: %s)",
                self.rank,
                self._state["malformed"],
                self._state["epoch"],
                self._first_malformed,
            )
        self._state = epoch_start(
            self._state["epoch"] + 1, self._state["malformed"], self._file_order_seed
        )

    def close(self) -> None:
        """Stops a running iteration (and its prefetch thread); the position is kept."""
        if self._active is not None:
            self._active.close()  # type: ignore[attr-defined]
            self._active = None


def _key(item: WorkItem) -> str:
    return json.dumps(item, sort_keys=True)


def _no_rows() -> ParsedRows:
    return (
        np.zeros(0, dtype=np.float64),
        np.zeros((0, NUM_DENSE), dtype=np.float64),
        np.zeros((0, NUM_SPARSE), dtype=np.int64),
    )


@dataclass
class _Scanned:
    """What :meth:`CriteoDataset._scan` found next in work item ``file``: one raw record,
    a block of parsed ones, or (neither) the end of the data. ``record``: the scan's
    record count after it; ``block_records``: after each record of the block."""

    file: int
    record: int
    block_records: np.ndarray | None = None
    raw: Record | None = None
    block: ParsedBlock | None = None
