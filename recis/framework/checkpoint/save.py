"""Saving a checkpoint: what each rank saves (its snapshot), writing this rank's files,
and the manifest rank 0 commits. The collectives and the commit are the Saver's."""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from torch import Tensor, nn

from recis.framework.checkpoint.dense import dense_state_dict
from recis.framework.checkpoint.disk_space import is_out_of_room, mib
from recis.framework.checkpoint.layout import ELEMENT, rank_table_items, state_kind
from recis.framework.checkpoint.load import optimizer_table_state
from recis.framework.checkpoint.storage import Storage
from recis.framework.checkpoint.tensor_file import dtype_name
from recis.framework.checkpoint.tree import encode, map_refs
from recis.framework.checkpoint.writer import write_files
from recis.framework.progress import Progress
from recis.nn.sparse_params import filter_out_sparse_param


def take_snapshot(
    model: nn.Module,
    sparse_optimizer: Any,
    objects: dict[str, tuple[Any, bool]],
    rank: int,
    staging: dict[str, Tensor] | None,
) -> dict[str, Any]:
    """What this rank saves: table shards and their state, dense, extra and io state.

    With ``staging`` None the snapshot references the live tensors; otherwise it holds
    host copies, in the buffers of ``staging`` (the previous snapshot's, by slot) where
    their shape and dtype still fit, and returns its own under ``"staging"``. A failure
    is returned as ``"error"`` (naming the rank and table), not raised: the rank still
    takes part in the save's collectives, so that every rank raises.
    """
    copied: dict[str, Tensor] = {}

    def take(t: Tensor, slot: str) -> Tensor:
        if staging is None:
            return t.detach()
        # Copying into memory already mapped is much cheaper than allocating it afresh.
        buf = staging.get(slot)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
        buf.copy_(t.detach())
        copied[slot] = buf
        return buf

    try:
        metas: dict[str, dict[str, Any]] = {}
        tables: dict[str, dict[str, Any]] = {}
        for name, table in filter_out_sparse_param(model).items():
            if table.weight.dim() != 2:
                raise ValueError(
                    f"table {name!r}: weight must be 2-D, got {list(table.weight.shape)}"
                )
            rows, cols = table.weight.shape
            tensors = {"weight": take(table.weight, f"sparse/{name}/weight")}
            kinds = {"weight": ELEMENT}
            for key, value in optimizer_table_state(sparse_optimizer, name).items():
                if key in kinds:
                    raise ValueError(f"table {name!r}: optimizer state may not be named {key!r}")
                kinds[key] = state_kind(name, key, tuple(value.shape), (rows, cols))
                tensors[key] = take(value, f"sparse/{name}/{key}")
            r0, c0 = table.row_offset, table.col_offset
            metas[name] = {
                "box": [r0, r0 + rows, c0, c0 + cols],
                "global_shape": list(table.global_shape),
                "dtype": dtype_name(table.weight.dtype),
                "state": kinds,
            }
            if hasattr(sparse_optimizer, "table_hyperparameters"):
                # An LR scheduler's lr goes on from where it was on resume.
                metas[name]["hyper"] = sparse_optimizer.table_hyperparameters(name)
            tables[name] = {"row_offset": r0, "tensors": tensors}
        items: dict[str, Tensor] = {}
        snapshot: dict[str, Any] = {"metas": metas, "tables": tables, "items": items}
        if rank == 0:
            snapshot["dense"] = encode(dense_state_dict(model), "dense", items)
            snapshot["extra"] = {
                name: encode(obj.state_dict(), f"extra/{name}", items)
                for name, (obj, per_rank) in objects.items()
                if not per_rank
            }
        snapshot["io_state"] = {
            name: encode(obj.state_dict(), f"io/{name}", items)
            for name, (obj, per_rank) in objects.items()
            if per_rank
        }
        for key in list(items):
            items[key] = take(items[key], key)
        if staging is not None:
            snapshot["staging"] = copied
        plans = [getattr(model, a, None) for a in ("plan", "sharding_plan")]
        plan = next((p for p in plans if hasattr(p, "to_json")), None)
        snapshot["plan"] = json.loads(plan.to_json()) if plan is not None else None
        return snapshot
    except Exception as e:
        return {"error": f"rank {rank}: {type(e).__name__}: {e}", "metas": {}, "plan": None}


def write_rank(
    storage: Storage,
    tmp: str,
    merged: dict[str, dict[str, Any]],
    rank: int,
    snapshot: dict[str, Any],
    concurrency: int,
    block_size: int,
    what: str,
) -> dict[str, Any]:
    """Writes this rank's files into ``tmp`` with ``concurrency`` threads; returns what
    the manifest needs from it. ``merged`` holds every rank's table metas
    (:func:`~recis.framework.checkpoint.layout.merge_table_metas`). Rank 0 reports the
    progress of a long write (``what``: e.g. "saving ckpt-600")."""
    sparse, pieces, scalars = rank_table_items(merged, rank, snapshot["tables"], concurrency)
    items: dict[str, Tensor] = {**snapshot["items"], **sparse}
    nbytes = sum(t.numel() * t.element_size() for t in items.values())
    progress = Progress(f"{what}: rank 0", "written", nbytes, log=rank == 0)
    try:
        location, files = write_files(
            storage, tmp, f"rank{rank:05d}", items, concurrency, block_size, progress.add
        )
    except OSError as e:
        if is_out_of_room(e):  # the size this rank needed: the error does not tell
            raise OSError(e.errno, f"{e.strerror}, writing {mib(nbytes)}") from e
        raise

    def ref(key: str) -> list[str]:
        return [location[key], key]

    result: dict[str, Any] = {
        "pieces": pieces,
        "scalars": {t: {k: ref(v) for k, v in s.items()} for t, s in scalars.items()},
        "files": files,
        "tables": {
            name: {k: v for k, v in merged[name].items() if k != "holders"} for name in merged
        },
    }
    for p in pieces:
        p["tensors"] = {k: ref(v) for k, v in p["tensors"].items()}
    for field in ("dense", "extra", "io_state"):
        if field in snapshot:
            result[field] = map_refs(snapshot[field], ref)
    return result


def manifest_body(
    ckpt_id: str, results: list[dict[str, Any]], world: int, plan: Any
) -> dict[str, Any]:
    """The manifest of a checkpoint from every rank's :func:`write_rank` result, in
    rank order: each table's pieces sorted by their place in it."""
    tables: dict[str, dict[str, Any]] = {
        name: {**meta, "pieces": [], "scalars": {}} for name, meta in results[0]["tables"].items()
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
    return {
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
