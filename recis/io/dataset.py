"""CriteoDataset: batches of Criteo text/CSV/Parquet files, split over ranks, resumable."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from recis.io.batch import Batch, rows_to_batch
from recis.io.criteo import NUM_DENSE, NUM_SPARSE, ParsedRows, RecordParser, resolve_table_sizes
from recis.io.prefetch import prefetch
from recis.io.readers import FORMATS, Record, open_reader
from recis.io.split import expand_paths, resolve_rank, split_files


class CriteoDataset:
    """Batches of Criteo records, each rank reading its own part; exactly resumable.

    Reads Criteo Kaggle/1TB TSV (``label \\t I1..I13 \\t C1..C26``, no header),
    CSV (with or without the ``label,I1,..,C26`` header; ``.gz`` too) and Parquet
    with those column names, from local paths or fsspec URLs (files, folders, globs:
    see :func:`recis.io.split.expand_paths`). See :mod:`recis.io.criteo` for how
    values become model inputs (missing categoricals are empty bags unless
    ``missing_id``).

    Each rank reads whole files when there are at least ``world_size`` of them,
    else rows ``i % world_size == rank`` (see :func:`recis.io.split.split_files`).
    ``rank``/``world_size`` default to the initialised process group.

    Iterating yields batches ``{"dense": [B, 13], "sparse": KJT C1..C26, "label": [B]}``
    from the current read position to the end of this rank's data; the last batch
    may be smaller unless ``drop_last``. The next iteration starts the next epoch.
    ``state_dict()`` is the position after the last batch handed out, so
    ``load_state_dict`` (before iterating) makes the next batch exactly the one
    that would have come next. A ``prefetch`` > 0 reads that many batches ahead on a
    thread.

    A malformed record raises ``ValueError`` naming its file and line, or, with
    ``skip_malformed=True``, is skipped and counted in :attr:`num_malformed`.

    Example::

        >>> ds = CriteoDataset("day_0.tsv", batch_size=4096, table_sizes=100_000)
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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
        self.batch_size = batch_size
        self.format = format
        self.drop_last = drop_last
        self.skip_malformed = skip_malformed
        self.prefetch = prefetch
        self.table_sizes = resolve_table_sizes(table_sizes)
        self._parser = RecordParser(self.table_sizes, missing_id)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.all_files = expand_paths(paths)
        self.files, self._split_rows = split_files(self.all_files, self.rank, self.world_size)
        self._state = self._epoch_start(0, 0)
        self._active: Iterator[Batch] | None = None

    # -- position ------------------------------------------------------------------
    @staticmethod
    def _epoch_start(epoch: int, malformed: int) -> dict[str, Any]:
        # "record" counts data records of the current epoch over all files (the row
        # split's index); "position" is the reader's resume point in file "file".
        return {"epoch": epoch, "file": 0, "position": {}, "record": 0, "malformed": malformed}

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
            "rank": self.rank,
            "world_size": self.world_size,
            "num_files": len(self.all_files),
            "batch_size": self.batch_size,
            **copy.deepcopy(self._state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes from :meth:`state_dict` of the same rank with the same files."""
        for key, mine in (
            ("world_size", self.world_size),
            ("rank", self.rank),
            ("num_files", len(self.all_files)),
        ):
            if int(state[key]) != mine:
                raise ValueError(
                    f"CriteoDataset state was saved with {key}={state[key]} but this "
                    f"dataset has {key}={mine}: a read position resumes only on the same "
                    "rank layout and files"
                )
        self.close()
        self._state = {
            "epoch": int(state["epoch"]),
            "file": int(state["file"]),
            "position": {k: int(v) for k, v in dict(state["position"]).items()},
            "record": int(state["record"]),
            "malformed": int(state["malformed"]),
        }

    # -- iteration -----------------------------------------------------------------
    def _parse(self, records: list[Record], state: dict[str, Any]) -> ParsedRows:
        """Parses records, vectorised when they are well-formed, else one by one."""
        fast = self._parser.parse_many([fields for _, fields, _ in records])
        if fast is not None:
            return fast
        labels, dense, ids = [], [], []
        for location, fields, _ in records:
            try:
                label, d, i = self._parser.parse(fields)
            except ValueError as e:
                if not self.skip_malformed:
                    raise ValueError(f"{location}: malformed record: {e}") from None
                state["malformed"] += 1
                continue
            labels.append(label)
            dense.append(d)
            ids.append(i)
        return (
            np.array(labels, dtype=np.float64),
            np.array(dense, dtype=np.float64).reshape(-1, NUM_DENSE),
            np.array(ids, dtype=np.int64).reshape(-1, NUM_SPARSE),
        )

    def _records(self, start: dict[str, Any]) -> Iterator[tuple[Record, dict[str, Any]]]:
        """This rank's records from ``start``, each with the state right after it."""
        state = copy.deepcopy(start)
        for file_index in range(start["file"], len(self.files)):
            position = state["position"] if file_index == start["file"] else {}
            for record in open_reader(self.files[file_index], self.format, position or None):
                index = state["record"]
                state["record"] = index + 1
                state["file"], state["position"] = file_index, record[2]
                if self._split_rows and index % self.world_size != self.rank:
                    continue
                yield record, state
            state["file"], state["position"] = file_index + 1, {}
        yield None, state  # type: ignore[misc]  # end of data: the final state

    def _produce(self, start: dict[str, Any]) -> Iterator[tuple[Batch | None, dict[str, Any]]]:
        """(batch, position after it) from ``start`` to the end of this rank's data,
        then ``(None, final state)``."""
        parts: list[ParsedRows] = []
        have = 0
        pending: list[Record] = []
        for record, state in self._records(start):
            if record is not None:
                pending.append(record)
                if have + len(pending) < self.batch_size:
                    continue
            # Parse a full batch (or the rest at the end); skipped records leave a gap
            # that the following records fill.
            if pending:
                part = self._parse(pending, state)  # counts skipped records in state
                pending = []
                parts.append(part)
                have += len(part[0])
            if have == self.batch_size or (record is None and have and not self.drop_last):
                columns = (np.concatenate(c) for c in zip(*parts, strict=True))
                yield rows_to_batch(*columns), copy.deepcopy(state)
                parts, have = [], 0
            if record is None:  # the end: hand over the final count of skipped records
                yield None, copy.deepcopy(state)

    def __iter__(self) -> Iterator[Batch]:
        self.close()
        self._active = self._iterate()
        return self._active

    def _iterate(self) -> Iterator[Batch]:
        for batch, state in prefetch(self._produce(self._state), self.prefetch):
            self._state = state
            if batch is not None:
                yield batch
        self._state = self._epoch_start(self._state["epoch"] + 1, self._state["malformed"])

    def close(self) -> None:
        """Stops a running iteration (and its prefetch thread); the position is kept."""
        if self._active is not None:
            self._active.close()  # type: ignore[attr-defined]
            self._active = None
