"""Room for a checkpoint in ``output_dir``: a save that cannot fit stops before it
fills the disk, and one that ran out of room says how much there was and why."""

from __future__ import annotations

import errno
from typing import Any

from torch import Tensor, nn

from recis.framework.checkpoint.dense import dense_state_dict
from recis.framework.checkpoint.layout import ELEMENT, ROW
from recis.framework.checkpoint.storage import Storage
from recis.nn.sparse_params import filter_out_sparse_param

# Out of space, or over the user's disk quota.
_OUT_OF_ROOM = (errno.ENOSPC, errno.EDQUOT)


def mib(nbytes: float) -> str:
    """A size in MiB as messages give it: ``"54.8 MiB"``."""
    return f"{nbytes / 2**20:.1f} MiB"


def is_out_of_room(error: BaseException) -> bool:
    """Did a write fail for want of space (or quota)?"""
    return isinstance(error, OSError) and error.errno in _OUT_OF_ROOM


def room_advice(max_keep: int | None) -> str:
    """Why ``output_dir`` needs room for one checkpoint more than it keeps, and what to do."""
    kept = f"the newest {max_keep} checkpoints" if max_keep else "every checkpoint"
    return (
        f"output_dir keeps {kept} and deletes the oldest only after a new one is "
        "committed, so it needs room for one more: free space there, keep fewer "
        "checkpoints (max_to_keep) or give output_dir a bigger disk"
    )


def free_space_note(storage: Storage, root: str) -> str:
    """``output_dir has N MiB free`` where the storage can tell, else ``""``."""
    free = storage.free_bytes(root)
    return "" if free is None else f"output_dir has {mib(free)} free"


def lacking_room(
    storage: Storage, root: str, needed: int | None, max_keep: int | None
) -> str | None:
    """Why a checkpoint of ``needed`` bytes (the size of the last one) cannot fit in
    ``root``'s file system, or None: it fits, or either size is unknown (an object
    store has no free space to tell)."""
    free = storage.free_bytes(root)
    if needed is None or free is None or free >= needed:
        return None
    return (
        f"output_dir {storage.url(root)} has {mib(free)} free, less than the "
        f"{mib(needed)} of the last checkpoint, and nothing was written: {room_advice(max_keep)}"
    )


def least_checkpoint_bytes(model: nn.Module, sparse_optimizer: Any) -> tuple[dict[str, int], int]:
    """Each table this rank holds a shard of -> the bytes of its whole weight and
    sparse-optimizer state, and the bytes of the dense state: what any checkpoint of
    ``model`` holds at least, before any step has run (the dense optimizer's state
    comes on top, and per-row state of a table cut by columns once per cut)."""
    tables = {
        name: _table_bytes(*table.global_shape, table.weight, sparse_optimizer, name)
        for name, table in filter_out_sparse_param(model).items()
    }
    return tables, _dense_bytes(model)


def rank_checkpoint_bytes(model: nn.Module, sparse_optimizer: Any) -> int:
    """The bytes of this rank's shards and their sparse-optimizer state, and of the
    dense state: what this rank copies to host memory for a background save, but for
    the dense optimizer's state and other registered objects."""
    tables = filter_out_sparse_param(model).items()
    return _dense_bytes(model) + sum(
        _table_bytes(*table.weight.shape, table.weight, sparse_optimizer, name)
        for name, table in tables
    )


def host_state_bytes(model: nn.Module, sparse_optimizer: Any) -> int:
    """The bytes of the sparse-optimizer state of this rank's shards that are in host
    memory: what the state takes there once created (it is created lazily)."""
    return sum(
        _table_bytes(*table.weight.shape, table.weight, sparse_optimizer, name)
        - table.weight.numel() * table.weight.element_size()
        for name, table in filter_out_sparse_param(model).items()
        if table.weight.device.type == "cpu"
    )


def _table_bytes(rows: int, cols: int, weight: Tensor, sparse_optimizer: Any, name: str) -> int:
    try:
        kinds = list(sparse_optimizer.table_state_kinds(name).values())
    except (AttributeError, KeyError):  # no optimizer, or none of this table
        kinds = []
    per_row = cols * (1 + kinds.count(ELEMENT)) + kinds.count(ROW)
    return rows * per_row * weight.element_size()


def _dense_bytes(model: nn.Module) -> int:
    dense = dense_state_dict(model).values()
    return sum(t.numel() * t.element_size() for t in dense if isinstance(t, Tensor))


def too_small_for(
    free: int | None, least: int, max_keep: int | None
) -> tuple[str | None, str | None]:
    """``(error, warning)`` for a file system with ``free`` bytes (None: unknown) and
    checkpoints of at least ``least`` bytes (:func:`least_checkpoint_bytes`): the error
    when not even one fits, the warning when fewer fit than ``max_keep`` and the one
    being saved."""
    if free is None:
        return None, None
    what = "this model's weights and sparse-optimizer state"
    if free < least:
        return (
            f"it has {mib(free)} free, but a checkpoint takes at least {mib(least)} "
            f"({what}): not one fits there. Free space there or give output_dir a "
            "bigger disk"
        ), None
    if max_keep and free < least * (max_keep + 1):
        fits = free // least
        return None, (
            f"it has {mib(free)} free: room for {fits} checkpoint{'' if fits == 1 else 's'} "
            f"of at least {mib(least)} ({what}). {room_advice(max_keep)}; else a save will "
            "stop the job once it is full"
        )
    return None, None
