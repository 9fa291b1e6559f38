"""Saver and CheckpointManager: sharded, atomic, resharding checkpoints.

Every rank writes the table shards it holds (weights and sparse-optimizer state)
with ``concurrency`` writer threads; rank 0 also writes the dense parameters, the
registered extra state and, last, the manifest that commits the checkpoint. Loading
reads only the slices each rank owns now, so a checkpoint written on N ranks with
one sharding plan loads on M ranks with another. See ``recis/framework/checkpoint/``
for the pieces and ``DESIGN.md`` §6 for the on-disk layout.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from recis.framework.checkpoint.commit import commit, read_ids, remove_stale, temp_name, validate_id
from recis.framework.checkpoint.integrity import DEFAULT_BLOCK_SIZE
from recis.framework.checkpoint.layout import (
    ELEMENT,
    SCALAR,
    Piece,
    merge_table_metas,
    pieces_for_rank,
    split_rows,
    state_kind,
)
from recis.framework.checkpoint.manifest import MANIFEST, dumps, read_manifest
from recis.framework.checkpoint.reader import TableReader
from recis.framework.checkpoint.storage import Storage, storage_for
from recis.framework.checkpoint.tensor_file import ReaderCache, dtype_name
from recis.framework.checkpoint.tree import decode, encode, map_refs
from recis.framework.checkpoint.writer import write_files
from recis.nn.sparse_params import filter_out_sparse_param
from recis.nn.table import EmbeddingTable

CATEGORIES = ("sparse", "sparse_opt", "dense", "extra", "io_state")
# Below this size a table piece is not cut further to feed more writer threads.
_MIN_CHUNK_BYTES = 16 << 20


class CheckpointError(RuntimeError):
    """A save or load failed on some rank (the message names the rank and the cause)."""


def _rank_world(group: Any) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _all_gather(obj: Any, group: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


def _broadcast(obj: Any, group: Any, world: int) -> Any:
    if world == 1:
        return obj
    box = [obj]
    src = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def _strip_wrappers(name: str) -> str:
    # DDP / DMP wrap the model as ``module``: a sharded and an unsharded model must
    # name their dense parameters alike.
    while name.startswith("module."):
        name = name[len("module.") :]
    return name


def _table_state_keys(model: nn.Module) -> set[str]:
    keys: set[str] = set()
    for path, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, EmbeddingTable):
            keys.update(f"{path}.{k}" if path else k for k in module.state_dict())
    return keys


def _fetch(cache: ReaderCache) -> Any:
    # A tensor read from a file views the (block-aligned) read buffer: copy it so that
    # restored state does not keep whole read blocks alive.
    return lambda ref: cache.read(ref).clone()


def _call(task: Callable[[], None]) -> None:
    task()


def _copy_into(dest: Tensor, src: Tensor) -> None:
    with torch.no_grad():
        dest.copy_(src.view(dest.shape))


def _store(state: dict[str, Tensor], key: str, value: Tensor, like: Tensor, cast: bool) -> None:
    state[key] = value.to(like.dtype if cast else value.dtype).to(like.device).view(value.shape)


def dense_state_dict(model: nn.Module) -> dict[str, Any]:
    """``model.state_dict()`` without embedding-table buffers, ``module.`` prefixes
    stripped (what a checkpoint saves as "dense")."""
    state = model.state_dict()
    return {name: state[key] for name, key in _dense_names(model).items()}


def _dense_names(model: nn.Module) -> dict[str, str]:
    """Checkpoint name (wrappers stripped) -> ``model.state_dict()`` key, tables left out."""
    # Compared without wrapper prefixes: DMP + DDP nest two ``module`` levels while
    # DMP's state_dict() names one.
    skip = {_strip_wrappers(k) for k in _table_state_keys(model)}
    names = {_strip_wrappers(k): k for k in model.state_dict()}
    return {name: key for name, key in names.items() if name not in skip}


def parse_load_conf(load_conf: dict[str, Any]) -> tuple[set[str], bool]:
    """``({categories to load}, strict)`` from ``{"load": [...], "exclude": [...], "strict": bool}``."""
    unknown = set(load_conf) - {"load", "exclude", "strict"}
    if unknown:
        raise ValueError(f"load_conf has unknown keys {sorted(unknown)}; use load, exclude, strict")

    def names(value: Any, field: str) -> set[str]:
        items = [value] if isinstance(value, str) else list(value or [])
        if "*" in items:
            return set(CATEGORIES)
        bad = [i for i in items if i not in CATEGORIES]
        if bad:
            raise ValueError(
                f"load_conf[{field!r}] has unknown categories {bad}; use {CATEGORIES} or '*'"
            )
        return set(items)

    chosen = names(load_conf.get("load", "*"), "load") - names(
        load_conf.get("exclude", []), "exclude"
    )
    return chosen, bool(load_conf.get("strict", True))


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
    def save(self, ckpt_id: str, blocking: bool = True) -> str:
        """Writes checkpoint ``ckpt_id`` (all ranks call it together); returns its path.

        Raises :class:`CheckpointError` on every rank if any rank failed; nothing is
        committed then, and the last committed checkpoint stays the latest.

        With ``blocking=False`` the state is first copied to host memory (the
        training may change it as soon as this returns), then written and committed
        by a background thread over a process group of its own; :meth:`wait`
        returns its path or raises its error. A later ``save`` or ``load`` waits for
        it first. Staging costs one host copy of the rank's shards.
        """
        validate_id(ckpt_id)
        self.wait()
        rank, world = _rank_world(self.process_group)
        if blocking:
            return self._save(self._snapshot(rank, copy=False), ckpt_id, self.process_group)
        if world > 1 and self._async_group is None:
            # Collectives of a background save must not interleave with the
            # training's on one group: give them their own (created by all ranks).
            self._async_group = dist.new_group(
                ranks=dist.get_process_group_ranks(self.process_group or dist.group.WORLD),
                backend="gloo",
            )
        snapshot = self._snapshot(rank, copy=True)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["path"] = self._save(snapshot, ckpt_id, self._async_group)
            except BaseException as e:
                result["error"] = e

        thread = threading.Thread(target=run, name=f"recis-ckpt-save-{ckpt_id}", daemon=True)
        self._pending = (thread, result)
        thread.start()
        return self._storage.url(self._storage.join(self._root, ckpt_id))

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

    def _save(self, snapshot: dict[str, Any], ckpt_id: str, group: Any) -> str:
        storage, root = self._storage, self._root
        rank, world = _rank_world(group)
        nonce, error = None, None
        if rank == 0:
            try:
                nonce = uuid.uuid4().hex[:12]
                storage.makedirs(root)
                remove_stale(storage, root)
                storage.makedirs(storage.join(root, temp_name(ckpt_id, nonce)))
            except Exception as e:
                error = f"rank 0 could not prepare {storage.url(root)}: {type(e).__name__}: {e}"
        nonce, error = _broadcast((nonce, error), group, world)
        if error:
            raise CheckpointError(f"checkpoint {ckpt_id!r}: {error}")
        tmp = storage.join(root, temp_name(ckpt_id, nonce))

        result: dict[str, Any]
        gathered = _all_gather((snapshot["metas"], snapshot.get("error")), group, world)
        try:
            if snapshot.get("error"):
                raise CheckpointError(snapshot["error"])
            if any(err for _, err in gathered):
                raise CheckpointError("another rank failed")
            merged = merge_table_metas([metas for metas, _ in gathered])
            result = self._write_rank(tmp, merged, rank, snapshot)
        except CheckpointError as e:
            result = {"error": str(e)}
        except Exception as e:
            result = {"error": f"rank {rank}: {type(e).__name__}: {e}"}
        results = _all_gather(result, group, world)
        errors = [r["error"] for r in results if "error" in r and "another rank" not in r["error"]]
        errors = errors or [r["error"] for r in results if "error" in r]
        status = "; ".join(errors) if errors else None
        if rank == 0:
            if status is None:
                try:
                    self._commit(tmp, ckpt_id, nonce, results, world, snapshot["plan"])
                except Exception as e:
                    status = f"rank 0 could not commit: {type(e).__name__}: {e}"
            if status is not None:
                storage.remove(tmp)
        status = _broadcast(status, group, world)
        if status is not None:
            raise CheckpointError(f"checkpoint {ckpt_id!r} was not saved: {status}")
        return storage.url(storage.join(root, ckpt_id))

    def _opt_state(self, name: str) -> dict[str, Tensor]:
        if self.sparse_optimizer is None:
            return {}
        try:
            return dict(self.sparse_optimizer.table_state(name))
        except KeyError:
            return {}  # a table this optimizer does not update has no state

    def _snapshot(self, rank: int, copy: bool) -> dict[str, Any]:
        """What this rank saves: table shards and their state, dense, extra and io
        state (tensors referenced, or copied to host memory with ``copy``)."""

        staging: dict[str, Tensor] = {}

        def take(t: Tensor, slot: str) -> Tensor:
            if not copy:
                return t.detach()
            # Host buffers are kept from one background save to the next: copying
            # into memory already mapped is much cheaper than allocating it afresh.
            buf = self._staging.get(slot)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
            buf.copy_(t.detach())
            staging[slot] = buf
            return buf

        try:
            metas: dict[str, dict[str, Any]] = {}
            tables: dict[str, dict[str, Any]] = {}
            for name, table in filter_out_sparse_param(self.model).items():
                if table.weight.dim() != 2:
                    raise ValueError(
                        f"table {name!r}: weight must be 2-D, got {list(table.weight.shape)}"
                    )
                rows, cols = table.weight.shape
                tensors = {"weight": take(table.weight, f"sparse/{name}/weight")}
                kinds = {"weight": ELEMENT}
                for key, value in self._opt_state(name).items():
                    if key in kinds:
                        raise ValueError(
                            f"table {name!r}: optimizer state may not be named {key!r}"
                        )
                    kinds[key] = state_kind(name, key, tuple(value.shape), (rows, cols))
                    tensors[key] = take(value, f"sparse/{name}/{key}")
                r0, c0 = table.row_offset, table.col_offset
                metas[name] = {
                    "box": [r0, r0 + rows, c0, c0 + cols],
                    "global_shape": list(table.global_shape),
                    "dtype": dtype_name(table.weight.dtype),
                    "state": kinds,
                }
                tables[name] = {"row_offset": r0, "tensors": tensors}
            items: dict[str, Tensor] = {}
            snapshot: dict[str, Any] = {"metas": metas, "tables": tables, "items": items}
            if rank == 0:
                snapshot["dense"] = encode(dense_state_dict(self.model), "dense", items)
                snapshot["extra"] = {
                    name: encode(obj.state_dict(), f"extra/{name}", items)
                    for name, (obj, per_rank) in self._objects.items()
                    if not per_rank
                }
            snapshot["io_state"] = {
                name: encode(obj.state_dict(), f"io/{name}", items)
                for name, (obj, per_rank) in self._objects.items()
                if per_rank
            }
            for key in list(items):
                items[key] = take(items[key], key)
            if copy:
                self._staging = staging
            plans = [getattr(self.model, a, None) for a in ("plan", "sharding_plan")]
            plan = next((p for p in plans if hasattr(p, "to_json")), None)
            snapshot["plan"] = json.loads(plan.to_json()) if plan is not None else None
            return snapshot
        except Exception as e:
            # Still take part in the save's collectives: every rank then raises.
            return {"error": f"rank {rank}: {type(e).__name__}: {e}", "metas": {}, "plan": None}

    def _write_rank(
        self, tmp: str, merged: dict[str, dict[str, Any]], rank: int, snapshot: dict[str, Any]
    ) -> dict[str, Any]:
        """Writes this rank's files into ``tmp``; returns what the manifest needs from it."""
        tables = snapshot["tables"]
        items: dict[str, Tensor] = dict(snapshot["items"])
        pieces: list[dict[str, Any]] = []
        scalars: dict[str, dict[str, str]] = {}
        mine = pieces_for_rank(merged, rank)

        def row_bytes(p: Piece) -> int:
            return sum(
                v[:1].numel() * v.element_size()
                for v in tables[p.table]["tensors"].values()
                if v.dim()
            )

        total = sum(p.num_rows * row_bytes(p) for p in mine)
        # Cut big pieces so that every writer thread has a share of the bytes.
        chunk_bytes = max(_MIN_CHUNK_BYTES, math.ceil(total / self.concurrency))
        for piece in mine:
            offset, state = tables[piece.table]["row_offset"], tables[piece.table]["tensors"]
            kinds = merged[piece.table]["state"]
            max_rows = max(1, chunk_bytes // max(1, row_bytes(piece)))
            for chunk in split_rows(piece, max_rows):
                lo, hi = chunk.rows[0] - offset, chunk.rows[1] - offset
                tag = f"{chunk.rows[0]}-{chunk.rows[1]}.{chunk.cols[0]}-{chunk.cols[1]}"
                refs = {}
                for key, kind in kinds.items():
                    if kind != SCALAR:
                        item = f"sparse/{piece.table}/{key}/{tag}"
                        items[item] = state[key][lo:hi]
                        refs[key] = item
                pieces.append(
                    {
                        "table": piece.table,
                        "rows": list(chunk.rows),
                        "cols": list(chunk.cols),
                        "tensors": refs,
                    }
                )
            if piece.rows[0] == 0 and piece.cols[0] == 0:
                # Scalars are the same on every shard: the shard holding element
                # (0, 0) of the table writes them, once.
                for key, kind in kinds.items():
                    if kind == SCALAR:
                        item = f"sparse/{piece.table}/{key}/scalar"
                        items[item] = state[key]
                        scalars.setdefault(piece.table, {})[key] = item
        location, files = write_files(
            self._storage, tmp, f"rank{rank:05d}", items, self.concurrency, self.block_size
        )

        def ref(key: str) -> list[str]:
            return [location[key], key]

        result: dict[str, Any] = {
            "pieces": pieces,
            "scalars": {t: {k: ref(v) for k, v in s.items()} for t, s in scalars.items()},
            "files": files,
            "tables": {
                name: {k: merged[name][k] for k in ("global_shape", "dtype", "state")}
                for name in merged
            },
        }
        for p in pieces:
            p["tensors"] = {k: ref(v) for k, v in p["tensors"].items()}
        for field in ("dense", "extra", "io_state"):
            if field in snapshot:
                result[field] = map_refs(snapshot[field], ref)
        return result

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
        tables: dict[str, dict[str, Any]] = {
            name: {**meta, "pieces": [], "scalars": {}}
            for name, meta in results[0]["tables"].items()
        }
        files: dict[str, Any] = {}
        for res in results:
            files.update(res["files"])
            for p in res["pieces"]:
                tables[p["table"]]["pieces"].append({k: p[k] for k in ("rows", "cols", "tensors")})
            for name, refs in res["scalars"].items():
                tables[name]["scalars"].update(refs)
        for entry in tables.values():
            entry["pieces"].sort(key=lambda p: (p["rows"][0], p["cols"][0]))
        body = {
            "ckpt_id": ckpt_id,
            "world_size": world,
            "created_unix": time.time(),
            "plan": plan,
            "files": files,
            "tables": tables,
            "dense": results[0]["dense"],
            "extra": results[0]["extra"],
            "io_state": {str(r): res["io_state"] for r, res in enumerate(results)},
        }
        with storage.open_write(storage.join(tmp, MANIFEST)) as f:
            f.write(dumps(body))
        storage.sync_dir(tmp)
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
            storage, root = self._storage, self._root
        else:
            storage, root = storage_for(ckpt_path)
        if ckpt_id is not None:
            validate_id(ckpt_id)
            return storage, storage.join(root, ckpt_id)
        if ckpt_path is not None and storage.exists(storage.join(root, MANIFEST)):
            return storage, root
        ids = read_ids(storage, root)
        if not ids:
            raise FileNotFoundError(f"no committed checkpoint in {storage.url(root)}")
        return storage, storage.join(root, ids[-1])

    def _load(
        self, ckpt_path: str | None, ckpt_id: str | None, categories: set[str], strict: bool
    ) -> str:
        self.wait()
        group = self.process_group
        rank, world = _rank_world(group)
        error: BaseException | None = None
        path = ""
        try:
            storage, ckpt_dir = self._resolve(ckpt_path, ckpt_id)
            path = storage.url(ckpt_dir)
            manifest = read_manifest(storage, ckpt_dir)
            cache = ReaderCache(storage, ckpt_dir, manifest["files"])
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="recis-ckpt-read") as pool:
                if categories & {"sparse", "sparse_opt"}:
                    self._load_sparse(manifest, cache, pool, categories, strict, path)
            if "dense" in categories:
                self._load_dense(manifest, cache, strict, path)
            if "extra" in categories:
                self._load_objects(manifest.get("extra", {}), cache, strict, path, per_rank=False)
            if "io_state" in categories:
                self._load_io_state(manifest, cache, strict, path, rank, world)
        except Exception as e:
            error = e
        # Ranks agree on the outcome, so that one rank's failure never leaves the
        # others running into a collective that will not complete.
        outcomes = _all_gather(
            None if error is None else f"{type(error).__name__}: {error}", group, world
        )
        if error is not None:
            raise error
        failed = [(r, m) for r, m in enumerate(outcomes) if m is not None]
        if failed:
            raise CheckpointError(f"loading {path} failed on rank {failed[0][0]}: {failed[0][1]}")
        return path

    def _load_sparse(self, manifest, cache, pool, categories, strict, path) -> None:
        # Plan every per-element read of every table first and run them all on the
        # pool, so that all reader threads are busy whatever the number of tables.
        saved_tables = manifest["tables"]
        tasks: list[Callable[[], None]] = []
        finish: list[Callable[[], None]] = []
        for name, table in filter_out_sparse_param(self.model).items():
            entry = saved_tables.get(name)
            if entry is None:
                msg = f"table {name!r} is not in checkpoint {path} (it has {sorted(saved_tables)})"
                if strict:
                    raise KeyError(msg)
                warnings.warn(msg + "; left as it is", stacklevel=3)
                continue
            if list(entry["global_shape"]) != list(table.global_shape):
                raise ValueError(
                    f"table {name!r} has global shape {list(table.global_shape)} in the model but "
                    f"{entry['global_shape']} in checkpoint {path}"
                )
            rows, cols = table.weight.shape
            box = (
                table.row_offset,
                table.row_offset + rows,
                table.col_offset,
                table.col_offset + cols,
            )
            reader = TableReader(cache, name, entry)
            if "sparse" in categories:
                weight, reads = reader.plan_element("weight", box, out=table.weight)
                tasks += reads
                if weight is not table.weight:
                    finish.append(functools.partial(_copy_into, table.weight, weight))
            if "sparse_opt" in categories and self.sparse_optimizer is not None:
                tasks += self._plan_table_opt(name, table, reader, box, strict, path, finish)
        list(pool.map(_call, tasks))
        for step in finish:
            step()

    def _plan_table_opt(
        self, name, table, reader, box, strict, path, finish
    ) -> list[Callable[[], None]]:
        current = self._opt_state(name)
        saved = [k for k in reader.entry["state"] if k != "weight"]
        if strict and current and set(current) != set(saved):
            raise KeyError(
                f"table {name!r}: the sparse optimizer has state {sorted(current)} but checkpoint "
                f"{path} has {sorted(saved)} (a different optimizer?)"
            )
        new = dict(current)
        tasks: list[Callable[[], None]] = []
        shape = (box[1] - box[0], box[3] - box[2])
        for key in saved:
            if current and key not in current:
                continue
            like = current.get(key, table.weight)
            if reader.kind(key) == ELEMENT:
                # Same-shaped state is filled in place: no extra copy of its bytes.
                fill = key in current and tuple(like.shape) == shape
                value, reads = reader.plan_element(key, box, out=like if fill else None)
                tasks += reads
                if value is not like:
                    finish.append(functools.partial(_store, new, key, value, like, key in current))
                else:
                    new[key] = like
            else:
                value = reader.read(key, box)
                new[key] = value.to(like.dtype if key in current else value.dtype).to(like.device)
        if new:
            finish.append(functools.partial(self.sparse_optimizer.set_table_state, name, new))
        return tasks

    def _load_dense(self, manifest, cache, strict, path) -> None:
        saved = decode(manifest.get("dense", {}), _fetch(cache))
        own = _dense_names(self.model)
        missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
        if (missing or unexpected) and strict:
            raise KeyError(
                f"dense state of checkpoint {path} does not match the model: missing "
                f"{missing}, unexpected {unexpected}"
            )
        if missing or unexpected:
            warnings.warn(
                f"dense state: not in checkpoint {missing}, not in model {unexpected}", stacklevel=3
            )
        self.model.load_state_dict({own[k]: v for k, v in saved.items() if k in own}, strict=False)

    def _load_objects(self, saved: dict[str, Any], cache, strict, path, per_rank: bool) -> None:
        for name, (obj, obj_per_rank) in self._objects.items():
            if obj_per_rank != per_rank:
                continue
            if name not in saved:
                msg = f"{'io state' if per_rank else 'extra state'} {name!r} is not in checkpoint {path}"
                if strict:
                    raise KeyError(msg)
                warnings.warn(msg, stacklevel=3)
                continue
            obj.load_state_dict(decode(saved[name], _fetch(cache)))

    def _load_io_state(self, manifest, cache, strict, path, rank: int, world: int) -> None:
        saved_world = int(manifest["world_size"])
        io = manifest.get("io_state", {})
        if saved_world == world:
            self._load_objects(io.get(str(rank), {}), cache, strict, path, per_rank=True)
            return
        for name, (obj, per_rank) in self._objects.items():
            if not per_rank:
                continue
            if hasattr(obj, "load_resharded_state_dict"):
                states = [
                    decode(io[str(r)][name], _fetch(cache))
                    for r in range(saved_world)
                    if name in io.get(str(r), {})
                ]
                obj.load_resharded_state_dict(states, rank, world)
            else:
                warnings.warn(
                    f"io state {name!r} was saved by {saved_world} ranks and this job has {world}: "
                    "not restored (define load_resharded_state_dict(states, rank, world_size) to map it)",
                    stacklevel=3,
                )


class CheckpointManager:
    """Saves every ``save_interval`` optimizer steps and restores the latest checkpoint.

    The manager's own global step is saved with each checkpoint (as extra state
    ``checkpoint_manager``), so ``restore()`` returns the step to resume from.

    Example::

        >>> manager = CheckpointManager(saver, save_interval=1000)
        >>> start = manager.restore()          # 0 on a fresh job
        >>> for step in range(start, total_steps):
        ...     train_one_step()
        ...     manager.step()                 # saves at steps 1000, 2000, ...
    """

    def __init__(self, saver: Saver, save_interval: int) -> None:
        if save_interval < 0:
            raise ValueError(
                f"save_interval must be >= 0 (0: never automatically), got {save_interval}"
            )
        self.saver = saver
        self.save_interval = save_interval
        self._global_step = 0
        saver.register_for_checkpointing("checkpoint_manager", self)

    @property
    def global_step(self) -> int:
        return self._global_step

    def step(self) -> str | None:
        """Counts one optimizer step; saves when it completes an interval (path, else None)."""
        self._global_step += 1
        if self.save_interval and self._global_step % self.save_interval == 0:
            return self.save()
        return None

    def save(self) -> str:
        """Saves now as ``ckpt-<global_step>``; returns the checkpoint's path."""
        return self.saver.save(f"ckpt-{self._global_step}")

    def restore(self) -> int:
        """Loads the latest checkpoint of the saver's ``output_dir``; returns its global
        step (0, loading nothing, when there is none)."""
        if self.saver.latest_checkpoint() is None:
            return 0
        self.saver.load()
        return self._global_step

    def state_dict(self) -> dict[str, int]:
        return {"global_step": self._global_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._global_step = int(state["global_step"])
