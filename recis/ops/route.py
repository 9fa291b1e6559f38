"""Routing of a batch's ids to the shards that serve them (the ``recis::route`` kernel):
the sharded input dist's send buffers, built in one pass over the batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

import recis  # noqa: F401  (loads the kernels)


@dataclass(frozen=True)
class TableRoute:
    """Where one table's ids go: its rows split in blocks ``[bounds[i], bounds[i+1])``;
    an id of block ``i`` goes, made local to the block (``id - bounds[i]``), to every
    slot in ``slots[i]``. A row-split table has one slot per block; a whole or
    column-split table one block with a slot per column chunk. A slot is named once
    in a plan; an empty block may name none. ``divide``: the ids' weights become
    ``weight / bag length`` (mean pooling over row blocks)."""

    bounds: Sequence[int]
    slots: Sequence[Sequence[int]]
    divide: bool = False


class RoutingPlan(NamedTuple):
    """The host tensors ``recis::route`` reads (see :func:`routing_plan`)."""

    key_table: Tensor  # [keys]: the table each key feeds, -1 for none
    key_feature: Tensor  # [keys]: which feature of its table the key is
    table_bounds: Tensor  # [tables, blocks + 1], padded with the last bound
    table_slots: Tensor  # [tables, blocks, copies], padded with -1
    table_divide: Tensor  # [tables] bool
    slot_features: Tensor  # [slots]: features of the slot's table
    slot_dest: Tensor  # [slots]: the rank the slot is on (non-decreasing)


def routing_plan(
    keys: Sequence[tuple[int, int] | None],
    tables: Sequence[TableRoute],
    slot_features: Sequence[int],
    slot_dest: Sequence[int],
) -> RoutingPlan:
    """The plan of :func:`route`: ``keys[f]`` is ``(table, feature)`` for a key that
    feeds feature ``feature`` of ``tables[table]``, or ``None``; slot ``s`` serves
    ``slot_features[s]`` features and is on dest ``slot_dest[s]``; slots are numbered
    in send order, so every dest's slots are consecutive."""
    blocks = max((len(t.slots) for t in tables), default=1)
    copies = max((len(s) for t in tables for s in t.slots), default=1)
    bounds = [[*t.bounds, *[t.bounds[-1]] * (blocks - len(t.slots))] for t in tables]
    slots = [
        [[*s, *[-1] * (copies - len(s))] for s in t.slots]
        + [[-1] * copies] * (blocks - len(t.slots))
        for t in tables
    ]

    def i64(values: object, shape: tuple[int, ...]) -> Tensor:
        return torch.tensor(values, dtype=torch.int64).reshape(shape)

    return RoutingPlan(
        i64([-1 if k is None else k[0] for k in keys], (len(keys),)),
        i64([0 if k is None else k[1] for k in keys], (len(keys),)),
        i64(bounds, (len(tables), blocks + 1)),
        i64(slots, (len(tables), blocks, copies)),
        torch.tensor([t.divide for t in tables], dtype=torch.bool),
        i64(list(slot_features), (len(slot_features),)),
        i64(list(slot_dest), (len(slot_dest),)),
    )


class Routes(NamedTuple):
    """A batch routed to its slots; see :func:`route`."""

    send_ints: Tensor  # per dest: its slots' bag lengths, then their ids (int64)
    send_weights: Tensor | None  # per dest: its ids' weights
    slot_ids: list[int]  # ids sent to each slot
    positions: Tensor | None  # where each sent id was in the batch's values


def route(
    values: Tensor,
    lengths: Tensor,
    weights: Tensor | None,
    batch: int,
    plan: RoutingPlan,
    with_positions: bool = False,
) -> Routes:
    """Routes a batch (a KeyedJaggedTensor's ``values``, ``lengths`` and ``weights``
    with ``batch`` samples: key ``f``'s bags are ``lengths[f * batch:(f + 1) * batch]``)
    to the slots of ``plan``, in one pass.

    ``send_ints`` holds, for each dest in turn, the bag lengths of its slots (slot,
    feature, sample order), then their ids in the same order (the order within a bag
    kept): what the input dist's all-to-all sends. ``send_weights`` holds each dest's
    ids' weights (1 where the batch has none), or is ``None`` when the batch has no
    weights and no table divides. ``positions`` (with ``with_positions``) gives each
    sent id's position in ``values``, in ``send_weights``' order. An id outside its
    table's rows raises ``ValueError`` naming the id, its position and its key.

    Example::

        >>> plan = routing_plan([(0, 0)], [TableRoute([0, 4, 8], [[0], [1]])], [1, 1], [0, 1])
        >>> r = route(torch.tensor([5, 1, 7, 2]), torch.tensor([3, 1]), None, 2, plan)
        >>> r.send_ints.tolist(), r.slot_ids   # dest 0: lengths [1, 1], ids [1, 2], ...
        ([1, 1, 1, 2, 2, 0, 1, 3], [2, 2])
    """
    send_ints, send_w, slot_ids, positions = torch.ops.recis.route(
        values, lengths, weights, batch, *plan, with_positions
    )
    return Routes(
        send_ints,
        send_w if weights is not None or bool(plan.table_divide.any()) else None,
        slot_ids.tolist(),
        positions if with_positions else None,
    )
