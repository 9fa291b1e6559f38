"""Saver (and CheckpointManager, from ``checkpoint/manager.py``): sharded, atomic,
resharding checkpoints.

Every rank writes the table shards it holds (weights and sparse-optimizer state)
with ``concurrency`` writer threads; rank 0 also writes the dense parameters, the
registered extra state and, last, the manifest that commits the checkpoint. Loading
reads only the slices each rank owns now, so a checkpoint written on N ranks with
one sharding plan loads on M ranks with another. See ``recis/framework/checkpoint/``
for the pieces and ``DESIGN.md`` §6 for the on-disk layout.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch.distributed as dist
from torch import Tensor, nn

from recis.distributed.comm import all_gather_objects, group_timeout, rank_and_world
from recis.framework.checkpoint.commit import (
    check_claim,
    claim,
    commit,
    find_checkpoint,
    read_ids,
    remove_stale,
    temp_name,
    validate_id,
)
from recis.framework.checkpoint.disk_space import (
    free_space_note,
    is_out_of_room,
    lacking_room,
    least_checkpoint_bytes,
    room_advice,
    too_small_for,
)
from recis.framework.checkpoint.integrity import DEFAULT_BLOCK_SIZE
from recis.framework.checkpoint.layout import merge_table_metas
from recis.framework.checkpoint.load import CATEGORIES, CheckpointLoader, is_damage, parse_load_conf
from recis.framework.checkpoint.manager import CheckpointManager
from recis.framework.checkpoint.manifest import MANIFEST, dumps, read_manifest, saved_at
from recis.framework.checkpoint.save import manifest_body, take_snapshot, write_rank
from recis.framework.checkpoint.shared_dir import ranks_see_one_directory
from recis.framework.checkpoint.storage import Storage, storage_for
from recis.framework.checkpoint.tensor_file import ReaderCache
from recis.framework.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "CheckpointManager", "Saver", "parse_load_conf"]

# A save held up this long by the background save before it is reported.
WAIT_REPORTED_SECONDS = 1.0


class CheckpointError(RuntimeError):
    """A save or load failed on some rank (the message names the rank and the cause).

    ``damaged`` is true when a load failed because the checkpoint's files are
    missing, truncated or corrupted, rather than because they do not fit the model.
    """

    def __init__(self, message: str, damaged: bool = False) -> None:
        super().__init__(message)
        self.damaged = damaged


def _broadcast(obj: Any, group: Any, world: int) -> Any:
    if world == 1:
        return obj
    box = [obj]
    src = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def _join_errors(errors: list[str], shown: int = 3) -> str:
    """The first ``shown`` of the ranks' errors (a thousand ranks may fail alike)."""
    more = len(errors) - shown
    return "; ".join(errors[:shown]) + (f"; and {more} more on other ranks" if more > 0 else "")


class Saver:
    """Saves and loads sharded checkpoints of a (possibly sharded) model.

    ``save(ckpt_id)`` is called by all ranks together; each writes its shards with
    ``concurrency`` threads and rank 0 commits. ``max_keep`` (None or 0: keep all)
    bounds how many committed checkpoints stay in ``output_dir``.

    Registered objects (``state_dict``/``load_state_dict``) are saved too:
    ``per_rank=False`` ("extra": dense optimizer, LR scheduler, trainer state — the
    same on every rank, saved once by rank 0) or ``per_rank=True`` ("io_state": each
    rank's data position). IO state comes back exactly when the world size is
    unchanged. Otherwise an object that defines
    ``load_resharded_state_dict(states, rank, world_size)`` receives every saved
    rank's state to map as it sees fit; any other is not restored (it keeps its
    initial position) and a warning says so.

    Example::

        >>> saver = Saver(model, sparse_opt, "/ckpt/job1", max_keep=3, concurrency=4)
        >>> saver.register_for_checkpointing("dense_opt", dense_opt)
        >>> saver.register_for_checkpointing("reader", dataset, per_rank=True)
        >>> saver.save("step-1000")
        >>> saver.load()                      # latest in /ckpt/job1
        >>> saver.load_by_config("/ckpt/other_job", {"load": ["sparse"], "strict": False})
    """

    def __init__(
        self,
        model: nn.Module,
        sparse_optimizer: Any = None,
        output_dir: str = "",
        max_keep: int | None = 5,
        concurrency: int = 4,
        process_group: Any = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        if not output_dir:
            raise ValueError("Saver needs an output_dir (local path or fsspec URL)")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.model = model
        self.sparse_optimizer = sparse_optimizer
        self.output_dir = output_dir
        self.max_keep = max_keep
        self.concurrency = concurrency
        self.process_group = process_group
        self.block_size = block_size
        self._storage, self._root = storage_for(output_dir)
        self._objects: dict[str, tuple[Any, bool]] = {}
        self._async_group: Any = None
        self._staging: dict[str, Tensor] = {}
        self._pending: tuple[threading.Thread, dict[str, Any]] | None = None
        self._owner: dict[str, str] | None = None  # see claim()
        # Of the last checkpoint saved, or loaded whole: the size the next save needs.
        self._last_saved_bytes: int | None = None

    # ------------------------------------------------------------------ registry
    def register_for_checkpointing(self, name: str, obj: Any, per_rank: bool = False) -> None:
        """Saves ``obj.state_dict()`` with every checkpoint and restores it on load."""
        if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
            raise TypeError(f"{name!r}: {type(obj).__name__} lacks state_dict()/load_state_dict()")
        if name in self._objects:
            raise ValueError(f"an object is already registered for checkpointing as {name!r}")
        self._objects[name] = (obj, per_rank)

    # ------------------------------------------------------------------ listing
    def latest_checkpoint(self) -> str | None:
        """Path (or URL) of the newest committed checkpoint in ``output_dir``; None if none."""
        ids = read_ids(self._storage, self._root)
        return self._storage.url(self._storage.join(self._root, ids[-1])) if ids else None

    def checkpoints(self) -> list[str]:
        """Committed checkpoint ids in ``output_dir``, oldest first."""
        return read_ids(self._storage, self._root)

    # ------------------------------------------------------------------ save
    def check_writable(self) -> None:
        """Raises :class:`CheckpointError` on every rank unless every rank can create
        ``output_dir``, write a file in it and see the file another rank wrote there
        (one directory shared by all ranks, not each node's local disk); all ranks
        call it together. ``save`` checks the sharing again before it commits.

        ``Trainer.train()`` calls it first, so that a job learns at its start, not at
        its first save hours later, that its checkpoints cannot be written.
        """
        storage, root = self._storage, self._root
        group = self.process_group
        rank = rank_and_world(group)[0]
        error, probe, free = None, None, None
        try:
            storage.makedirs(root)
            path = storage.join(root, f".write-probe-rank{rank}-{uuid.uuid4().hex[:8]}")
            with storage.open_write(path) as f:
                f.write(b"recis")
            probe = path
            free = storage.free_bytes(root) if rank == 0 else None  # one file system
        except Exception as e:
            error = f"rank {rank} cannot write there: {type(e).__name__}: {e}"
        tables, dense = least_checkpoint_bytes(self.model, self.sparse_optimizer)
        gathered = all_gather_objects((error, tables, free), group)
        errors = [e for e, _, _ in gathered if e]
        if not errors:
            # Every table counted once, whichever ranks hold its shards.
            tables = {name: size for _, sizes, _ in gathered for name, size in sizes.items()}
            lacking, tight = too_small_for(
                gathered[0][2], sum(tables.values()) + dense, self.max_keep
            )
            errors = [lacking] if lacking else []
            if tight and rank == 0:
                logger.warning("output_dir %s: %s", storage.url(root), tight)
        if not errors:
            # Also a barrier: no probe is removed before the rank that looks for it looked.
            unseen = ranks_see_one_directory(storage, probe, group)
            errors = [unseen] if unseen else []
        if probe is not None:
            storage.remove(probe)
        if errors:
            raise CheckpointError(f"output_dir {storage.url(root)}: {errors[0]}")

    def claim(self) -> None:
        """Marks ``output_dir`` as this job's (rank 0 writes ``.owner``; call it on every
        rank). From then on a save raises :class:`CheckpointError` on every rank, and
        writes nothing, if another job has claimed the directory since: two jobs
        saving into one ``output_dir`` would delete each other's temporaries and
        prune each other's checkpoints. ``Trainer.train()`` claims at its start, so
        the job started last keeps the directory (a restarted job takes over from
        its dead attempt).
        """
        if rank_and_world(self.process_group)[0] == 0:
            self._owner = claim(self._storage, self._root)

    def save(self, ckpt_id: str, blocking: bool = True) -> str:
        """Writes checkpoint ``ckpt_id`` (all ranks call it together); returns its path.

        Raises :class:`CheckpointError` on every rank if any rank failed; nothing is
        committed then, and the last committed checkpoint stays the latest.

        With ``blocking=False`` the state is first copied to host memory (the
        training may change it as soon as this returns), then written and committed
        by a background thread over a process group of its own; :meth:`wait`
        returns its path or raises its error. A later ``save`` or ``load`` waits for
        it first. Staging costs one host copy of the rank's shards. A program that ends
        first still finishes the save (the interpreter waits for its thread), but only
        :meth:`wait` reports whether it failed.
        """
        validate_id(ckpt_id)
        rank, world = rank_and_world(self.process_group)
        self._wait_before(ckpt_id, rank)
        if blocking:
            snapshot = take_snapshot(self.model, self.sparse_optimizer, self._objects, rank, None)
            return self._save(snapshot, ckpt_id, self.process_group)
        if world > 1 and self._async_group is None:
            # Collectives of a background save must not interleave with the
            # training's on one group: give them their own (created by all ranks),
            # waiting as long as the training's (TrainingArguments.ddp_timeout).
            self._async_group = dist.new_group(
                ranks=dist.get_process_group_ranks(self.process_group or dist.group.WORLD),
                backend="gloo",
                timeout=group_timeout(self.process_group),
            )
        # Host buffers are kept from one background save to the next.
        snapshot = take_snapshot(
            self.model, self.sparse_optimizer, self._objects, rank, self._staging
        )
        self._staging = snapshot.pop("staging", self._staging)
        result: dict[str, Any] = {"id": ckpt_id}

        def run() -> None:
            try:
                result["path"] = self._save(snapshot, ckpt_id, self._async_group)
            except BaseException as e:
                result["error"] = e

        # Not a daemon: at interpreter exit a daemon thread inside a torch op is ended
        # where it takes the GIL back, which aborts the process ("terminate called
        # without an active exception").
        thread = threading.Thread(target=run, name=f"recis-ckpt-save-{ckpt_id}")
        self._pending = (thread, result)
        thread.start()
        return self._storage.url(self._storage.join(self._root, ckpt_id))

    @property
    def background_save(self) -> str | None:
        """The id of the background save still being written, else None."""
        if self._pending is None or not self._pending[0].is_alive():
            return None
        return self._pending[1]["id"]

    def wait(self) -> str | None:
        """Waits for a background save; returns its path (None if none was running)."""
        if self._pending is None:
            return None
        thread, result = self._pending
        thread.join()
        self._pending = None
        if "error" in result:
            raise result["error"]
        return result["path"]

    def _wait_before(self, ckpt_id: str, rank: int) -> None:
        """Waits for a background save before the next; says so when that held it up."""
        if self._pending is None:
            return
        thread, result = self._pending
        start, busy = time.monotonic(), thread.is_alive()
        self.wait()
        waited = time.monotonic() - start
        if busy and waited >= WAIT_REPORTED_SECONDS and rank == 0:
            logger.warning(
                "checkpoint %r waited %.1f s for the background save of %r: saves come "
                "faster than they are written (save less often: "
                "TrainingArguments.save_steps)",
                ckpt_id,
                waited,
                result["id"],
            )

    def _save(self, snapshot: dict[str, Any], ckpt_id: str, group: Any) -> str:
        storage, root = self._storage, self._root
        rank, world = rank_and_world(group)
        start = time.monotonic()
        nonce, error = None, None
        if rank == 0:
            try:
                nonce = uuid.uuid4().hex[:12]
                storage.makedirs(root)
                if self._owner is not None:  # before touching another job's temporaries
                    check_claim(storage, root, self._owner)
                remove_stale(storage, root)
                error = lacking_room(storage, root, self._last_saved_bytes, self.max_keep)
                if error is None:
                    storage.makedirs(storage.join(root, temp_name(ckpt_id, nonce)))
            except Exception as e:
                error = f"rank 0 could not prepare {storage.url(root)}: {type(e).__name__}: {e}"
        nonce, error = _broadcast((nonce, error), group, world)
        if error:
            raise CheckpointError(f"checkpoint {ckpt_id!r}: {error}")
        tmp = storage.join(root, temp_name(ckpt_id, nonce))

        result: dict[str, Any]
        gathered = all_gather_objects((snapshot["metas"], snapshot.get("error")), group)
        try:
            if snapshot.get("error"):
                raise CheckpointError(snapshot["error"])
            if any(err for _, err in gathered):
                raise CheckpointError("another rank failed")
            merged = merge_table_metas([metas for metas, _ in gathered])
            result = write_rank(
                storage,
                tmp,
                merged,
                rank,
                snapshot,
                self.concurrency,
                self.block_size,
                f"saving {ckpt_id}",
            )
        except CheckpointError as e:
            result = {"error": str(e)}
        except Exception as e:
            result = {"error": f"rank {rank}: {type(e).__name__}: {e}"}
            if is_out_of_room(e):
                result["out_of_room"] = True
        results = all_gather_objects(result, group)
        errors = [r["error"] for r in results if "error" in r and "another rank" not in r["error"]]
        errors = errors or [r["error"] for r in results if "error" in r]
        if not errors:  # files a rank cannot see: a checkpoint no resume loads
            mine = storage.join(tmp, min(result["files"])) if result["files"] else None
            unseen = ranks_see_one_directory(storage, mine, group)
            errors = [f"output_dir {storage.url(root)}: {unseen}"] if unseen else []
        status = _join_errors(errors) if errors else None
        if rank == 0:
            if status is None:
                try:
                    self._commit(tmp, ckpt_id, nonce, results, world, snapshot["plan"])
                except Exception as e:
                    status = f"rank 0 could not commit: {type(e).__name__}: {e}"
            if status is not None:
                storage.remove(tmp)
                if any(r.get("out_of_room") for r in results):
                    note = free_space_note(storage, root)
                    status += (f"; {note}" if note else "") + f". {room_advice(self.max_keep)}"
        status = _broadcast(status, group, world)
        path = storage.url(storage.join(root, ckpt_id))
        if status is not None:
            raise CheckpointError(f"checkpoint {path} was not saved: {status}")
        files = [f for r in results for f in r["files"].values()]
        self._last_saved_bytes = sum(f["size"] for f in files)
        if rank == 0:
            logger.info(
                "checkpoint saved: %s (%d files, %.1f MiB from %d rank%s, %.2f s)",
                path,
                len(files),
                self._last_saved_bytes / 2**20,
                world,
                "" if world == 1 else "s",
                time.monotonic() - start,
            )
        return path

    def _commit(
        self,
        tmp: str,
        ckpt_id: str,
        nonce: str,
        results: list[dict[str, Any]],
        world: int,
        plan: Any,
    ) -> None:
        storage = self._storage
        body = manifest_body(ckpt_id, results, world, plan)
        with storage.open_write(storage.join(tmp, MANIFEST)) as f:
            f.write(dumps(body))
        storage.sync_dir(tmp)
        if self._owner is not None:  # the list and the pruning are the directory's owner's
            check_claim(storage, self._root, self._owner)
        commit(storage, self._root, tmp, ckpt_id, nonce, self.max_keep)

    # ------------------------------------------------------------------ load
    def load(self, ckpt_path: str | None = None, ckpt_id: str | None = None) -> str:
        """Loads everything (strict) from a checkpoint; returns its path.

        ``ckpt_path`` is a checkpoint folder or an output directory (its latest
        checkpoint); with neither argument, the latest in ``output_dir``;
        ``ckpt_id`` picks one by id in ``ckpt_path`` or ``output_dir``.
        """
        return self._load(ckpt_path, ckpt_id, set(CATEGORIES), strict=True)

    def load_by_config(self, ckpt_path: str | None, load_conf: dict[str, Any]) -> str:
        """Loads the categories ``load_conf`` selects; returns the checkpoint's path.

        ``load_conf = {"load": [...] | "*", "exclude": [...], "strict": bool}`` over
        ``sparse`` (table weights), ``sparse_opt`` (their optimizer state), ``dense``,
        ``extra`` and ``io_state``. With ``strict`` (default) every table, dense
        tensor and registered object of the selected categories must be in the
        checkpoint; without it, missing ones are skipped with a warning. A table
        whose global shape changed is an error either way.

        Example (warm start the embeddings from another job's checkpoint)::

            >>> saver.load_by_config("/ckpt/model_bank/job7", {"load": ["sparse"], "strict": False})
        """
        categories, strict = parse_load_conf(load_conf)
        return self._load(ckpt_path, None, categories, strict)

    def _resolve(self, ckpt_path: str | None, ckpt_id: str | None) -> tuple[Storage, str]:
        if ckpt_path is None:
            return self._storage, find_checkpoint(self._storage, self._root, ckpt_id, False)
        storage, root = storage_for(ckpt_path)
        return storage, find_checkpoint(storage, root, ckpt_id)

    def _load(
        self, ckpt_path: str | None, ckpt_id: str | None, categories: set[str], strict: bool
    ) -> str:
        self.wait()
        group = self.process_group
        rank, world = rank_and_world(group)
        error: BaseException | None = None
        path = ""
        start = time.monotonic()
        saved_world = 0
        read: tuple[Any, str] | None = None  # which checkpoint this rank read
        try:
            storage, ckpt_dir = self._resolve(ckpt_path, ckpt_id)
            path = storage.url(ckpt_dir)
            manifest = read_manifest(storage, ckpt_dir)
            saved_world = int(manifest["world_size"])
            # Compared exactly; said to the second.
            created = manifest.get("created_unix")
            read = (created, f"{manifest.get('ckpt_id')!r} saved {saved_at(manifest)}")
            progress = Progress(f"loading {path}: rank 0", "read", log=rank == 0)
            cache = ReaderCache(storage, ckpt_dir, manifest["files"], progress.add)
            loader = CheckpointLoader(self.model, self.sparse_optimizer, self._objects)
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="recis-ckpt-read") as pool:
                if categories & {"sparse", "sparse_opt"}:
                    loader.load_sparse(
                        manifest, cache, pool, categories, strict, path, progress.expect
                    )
            if "dense" in categories:
                loader.load_dense(manifest, cache, strict, path)
            if "extra" in categories:
                loader.load_objects(manifest.get("extra", {}), cache, strict, path, per_rank=False)
            if "io_state" in categories:
                loader.load_io_state(manifest, cache, strict, path, rank, world)
        except Exception as e:
            error = e
        # Ranks agree on the outcome, so that one rank's failure never leaves the
        # others running into a collective that will not complete.
        outcome = None if error is None else (f"{type(error).__name__}: {error}", is_damage(error))
        gathered = all_gather_objects((outcome, read), group)
        if error is not None:
            raise error
        failed = [(r, m) for r, (m, _) in enumerate(gathered) if m is not None]
        if failed:
            rank_failed, (message, damaged) = failed[0]
            raise CheckpointError(
                f"loading {path} failed on rank {rank_failed}: {message}", damaged=damaged
            )
        other = next(
            (r for r, (_, theirs) in enumerate(gathered) if theirs != gathered[0][1]), None
        )
        if other is not None:  # each node's own copy of a model bank, say
            raise CheckpointError(
                f"loading {ckpt_path if ckpt_path is not None else self.output_dir}: the "
                f"ranks read different checkpoints there: rank {other} "
                f"{gathered[other][1][1]}, rank 0 {gathered[0][1][1]}. Every rank "
                "must read the same one: give them one shared copy"
            )
        if categories == set(CATEGORIES) and strict:
            # All of it loaded into this model: the next save will be about as big.
            self._last_saved_bytes = sum(int(f["size"]) for f in manifest["files"].values())
        if rank == 0:
            logger.info(
                "checkpoint loaded: %s (saved by %d rank%s, loaded on %d, %.2f s)",
                path,
                saved_world,
                "" if saved_world == 1 else "s",
                world,
                time.monotonic() - start,
            )
        return path
