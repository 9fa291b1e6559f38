"""Loading a checkpoint into a model: the categories, and reading each rank's slices."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from recis.framework.checkpoint.dense import dense_names
from recis.framework.checkpoint.integrity import ChecksumError
from recis.framework.checkpoint.layout import ELEMENT, ROW, SCALAR, state_kind
from recis.framework.checkpoint.manifest import CheckpointFormatError
from recis.framework.checkpoint.reader import TableReader
from recis.framework.checkpoint.tensor_file import ReaderCache
from recis.framework.checkpoint.tree import decode
from recis.nn.sparse_params import filter_out_sparse_param

CATEGORIES = ("sparse", "sparse_opt", "dense", "extra", "io_state")


# Why a checkpoint does not fit the model, most often: a job's options changed.
OTHER_MODEL = (
    " (was it saved by another model, or with another embedding dim or table size? a "
    "checkpoint loads into the model that saved it: train a new one in a new output_dir)"
)


class NotInCheckpointError(KeyError):
    """Something the model has is not in the checkpoint, or the other way round. A
    ``KeyError`` whose message prints as it is (``KeyError`` quotes its own)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


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


def _fetch(cache: ReaderCache) -> Any:
    # A tensor read from a file views the (block-aligned) read buffer: copy it so that
    # restored state does not keep whole read blocks alive.
    return lambda ref: cache.read(ref).clone()


def _describe_state(kinds: dict[str, str]) -> str:
    """``state_sum (per row), step (scalar)`` from ``{key: kind}``."""
    shown = {ELEMENT: "per element", ROW: "per row", SCALAR: "scalar"}
    return ", ".join(f"{key} ({shown.get(kind, kind)})" for key, kind in sorted(kinds.items()))


def load_without(category: str) -> str:
    """How to load a checkpoint without ``category`` (e.g. ``"io_state"``), for the
    errors that name that way out: the API call, and the launcher's options."""
    return (
        f'Saver.load_by_config(path, {{"exclude": ["{category}"]}}); with launch/train.py, '
        "a new --output_dir and "
        f"""--model_bank '[{{"path": "OLD_OUTPUT_DIR", "exclude": ["{category}"]}}]'"""
    )


def _call(task: Callable[[], None]) -> None:
    task()


def _copy_into(dest: Tensor, src: Tensor) -> None:
    with torch.no_grad():
        dest.copy_(src.view(dest.shape))


def _store(state: dict[str, Tensor], key: str, value: Tensor, like: Tensor, cast: bool) -> None:
    state[key] = value.to(like.dtype if cast else value.dtype).to(like.device).view(value.shape)


def optimizer_table_state(sparse_optimizer: Any, name: str) -> dict[str, Tensor]:
    """The sparse optimizer's state of table ``name``; {} without optimizer or state."""
    if sparse_optimizer is None:
        return {}
    try:
        return dict(sparse_optimizer.table_state(name))
    except KeyError:
        return {}  # a table this optimizer does not update has no state


# What a load raises when the checkpoint itself is broken (a file missing, cut short or
# changed), as opposed to a checkpoint that does not fit the model.
_DAMAGE = (ChecksumError, CheckpointFormatError, FileNotFoundError)


def is_damage(error: BaseException) -> bool:
    """Whether a load failed because the checkpoint's files are missing or broken (on
    this rank, or on another: ``CheckpointError.damaged``)."""
    return isinstance(error, _DAMAGE) or bool(getattr(error, "damaged", False))


class CheckpointLoader:
    """Restores a checkpoint's categories into a model, its sparse optimizer and the
    objects registered for checkpointing (``name -> (obj, per_rank)``)."""

    def __init__(
        self, model: nn.Module, sparse_optimizer: Any, objects: dict[str, tuple[Any, bool]]
    ) -> None:
        self.model = model
        self.sparse_optimizer = sparse_optimizer
        self._objects = objects

    def load_sparse(self, manifest, cache, pool, categories, strict, path, planned=None) -> None:
        # Plan every per-element read of every table first and run them all on the
        # pool, so that all reader threads are busy whatever the number of tables;
        # ``planned(nbytes)`` is told what they will read before they start.
        saved_tables = manifest["tables"]
        tasks: list[Callable[[], None]] = []
        finish: list[Callable[[], None]] = []
        readers: list[TableReader] = []
        for name, table in filter_out_sparse_param(self.model).items():
            entry = saved_tables.get(name)
            if entry is None:
                msg = f"table {name!r} is not in checkpoint {path} (it has {sorted(saved_tables)})"
                if strict:
                    raise NotInCheckpointError(msg + OTHER_MODEL)
                warnings.warn(msg + "; left as it is", stacklevel=3)
                continue
            if list(entry["global_shape"]) != list(table.global_shape):
                raise ValueError(
                    f"table {name!r} has global shape {list(table.global_shape)} in the model but "
                    f"{entry['global_shape']} in checkpoint {path}{OTHER_MODEL}"
                )
            rows, cols = table.weight.shape
            box = (
                table.row_offset,
                table.row_offset + rows,
                table.col_offset,
                table.col_offset + cols,
            )
            reader = TableReader(cache, name, entry)
            readers.append(reader)
            if "sparse" in categories:
                weight, reads = reader.plan_element("weight", box, out=table.weight)
                tasks += reads
                if weight is not table.weight:
                    finish.append(functools.partial(_copy_into, table.weight, weight))
            if "sparse_opt" in categories and self.sparse_optimizer is not None:
                tasks += self._plan_table_opt(name, table, reader, box, strict, path, finish)
        if planned is not None:
            planned(sum(reader.planned_bytes for reader in readers))
        list(pool.map(_call, tasks))
        for step in finish:
            step()

    def _plan_table_opt(
        self, name, table, reader, box, strict, path, finish
    ) -> list[Callable[[], None]]:
        current = optimizer_table_state(self.sparse_optimizer, name)
        saved = [k for k in reader.entry["state"] if k != "weight"]
        if strict and current:
            local = tuple(table.weight.shape)
            ours = {k: state_kind(name, k, tuple(v.shape), local) for k, v in current.items()}
            theirs = {k: reader.kind(k) for k in saved}
            if ours != theirs:
                raise ValueError(
                    f"table {name!r}: {type(self.sparse_optimizer).__name__} keeps "
                    f"{_describe_state(ours)} but checkpoint {path} has "
                    f"{_describe_state(theirs)}: it was saved with another sparse optimizer. "
                    "To go on from it with this one, load it without its sparse optimizer "
                    f"state: {load_without('sparse_opt')}"
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
        hyper = reader.entry.get("hyper")
        if hyper and hasattr(self.sparse_optimizer, "set_table_hyperparameters"):
            finish.append(
                functools.partial(self.sparse_optimizer.set_table_hyperparameters, name, hyper)
            )
        return tasks

    def load_dense(self, manifest, cache, strict, path) -> None:
        saved = decode(manifest.get("dense", {}), _fetch(cache))
        own = dense_names(self.model)
        missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
        if (missing or unexpected) and strict:
            raise NotInCheckpointError(
                f"dense state of checkpoint {path} does not match the model: missing "
                f"{missing}, unexpected {unexpected}{OTHER_MODEL}"
            )
        if missing or unexpected:
            warnings.warn(
                f"dense state: not in checkpoint {missing}, not in model {unexpected}", stacklevel=3
            )
        self.model.load_state_dict({own[k]: v for k, v in saved.items() if k in own}, strict=False)

    def load_objects(self, saved: dict[str, Any], cache, strict, path, per_rank: bool) -> None:
        for name, (obj, obj_per_rank) in self._objects.items():
            if obj_per_rank != per_rank:
                continue
            if name not in saved:
                msg = f"{'io state' if per_rank else 'extra state'} {name!r} is not in checkpoint {path}"
                if strict:
                    raise NotInCheckpointError(msg)
                warnings.warn(msg, stacklevel=3)
                continue
            obj.load_state_dict(decode(saved[name], _fetch(cache)))

    def load_io_state(self, manifest, cache, strict, path, rank: int, world: int) -> None:
        saved_world = int(manifest["world_size"])
        io = manifest.get("io_state", {})
        if saved_world == world:
            self.load_objects(io.get(str(rank), {}), cache, strict, path, per_rank=True)
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
