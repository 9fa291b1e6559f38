"""Each table's ids, bag lengths and weights, read from a KeyedJaggedTensor batch and
validated for every feature in one pass."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from recis.nn.config import EmbeddingBagConfig
from recis.sparse import KeyedJaggedTensor

# Row limit of a key no table reads: every id passes.
_NO_LIMIT = torch.iinfo(torch.int64).max
# Key orders remembered per reader (and per input-dist router); more than this is not
# a training loop.
MAX_KEY_ORDERS = 16


class TableInput(NamedTuple):
    """One table's part of a batch: the ids of its features (feature-major), their bag
    lengths (``num_features * B``) and per-id weights."""

    ids: Tensor
    lengths: Tensor
    weights: Tensor | None


@dataclass
class _KeyOrder:
    """Where each table's features sit in batches with one key order."""

    positions: list[list[int]]  # per table: key index of each of its features
    contiguous: list[bool]  # per table: its features are consecutive keys, in order
    table_of_key: list[EmbeddingBagConfig | None]  # None: a key no table reads
    limit_per_key: Tensor  # rows of the key's table (int64)
    min_limit: int  # smallest table any key feeds
    has_unread_keys: bool


class BatchReader:
    """Reads every table's :class:`TableInput` from a :class:`KeyedJaggedTensor`.

    Missing features and ids outside ``[0, num_embeddings)`` raise ``ValueError``
    naming the table and feature. The ids of all features are checked together; the
    per-id search runs only to name the first bad id (in the batch's value order).
    A caller whose kernels range-check the ids anyway passes ``check_ids=False`` and
    calls :meth:`check_ids` only when they fail, to name the feature.
    Where each feature sits is worked out once per key order and device.

    Example::

        >>> reader = BatchReader(ebc.embedding_bag_configs())
        >>> ids, lengths, weights = reader(kjt)[0]   # the first table's input
    """

    def __init__(self, configs: Sequence[EmbeddingBagConfig]) -> None:
        self.configs = list(configs)
        self._orders: dict[tuple[tuple[str, ...], torch.device], _KeyOrder] = {}

    def __call__(self, kjt: KeyedJaggedTensor, check_ids: bool = True) -> list[TableInput]:
        order = self._key_order(kjt)
        if check_ids:
            self._check_ids(kjt, order)
        values, lengths, weights = kjt.values(), kjt.lengths(), kjt.weights_or_none()
        offsets, batch = kjt.offset_per_key(), kjt.stride()
        out = []
        for keys, contiguous in zip(order.positions, order.contiguous, strict=True):
            spans = [(keys[0], keys[-1] + 1)] if contiguous else [(k, k + 1) for k in keys]
            parts = [
                TableInput(
                    values[offsets[a] : offsets[b]],
                    lengths[a * batch : b * batch],
                    None if weights is None else weights[offsets[a] : offsets[b]],
                )
                for a, b in spans
            ]
            out.append(parts[0] if len(parts) == 1 else _cat(parts))
        return out

    def feature_keys(self, kjt: KeyedJaggedTensor) -> list[list[int]]:
        """Per table, the index in ``kjt.keys()`` of each of its features; a missing
        feature raises ``ValueError`` naming it and its table."""
        return self._key_order(kjt).positions

    def check_ids(self, kjt: KeyedJaggedTensor) -> None:
        """Raises ``ValueError`` naming the feature and table of the first id outside
        its table's rows (and of a missing feature); returns when all are in range."""
        self._check_ids(kjt, self._key_order(kjt))

    def _key_order(self, kjt: KeyedJaggedTensor) -> _KeyOrder:
        cache_key = (tuple(kjt.keys()), kjt.values().device)
        order = self._orders.get(cache_key)
        if order is None:
            if len(self._orders) >= MAX_KEY_ORDERS:
                self._orders.clear()
            order = self._orders[cache_key] = self._locate(kjt)
        return order

    def _locate(self, kjt: KeyedJaggedTensor) -> _KeyOrder:
        index = {k: i for i, k in enumerate(kjt.keys())}
        table_of_key: list[EmbeddingBagConfig | None] = [None] * len(index)
        positions, contiguous = [], []
        for cfg in self.configs:
            missing = [f for f in cfg.feature_names if f not in index]
            if missing:
                raise ValueError(
                    f"table {cfg.name!r}: feature(s) {missing} are missing from the batch "
                    f"(its keys: {kjt.keys()})"
                )
            keys = [index[f] for f in cfg.feature_names]
            for k in keys:
                table_of_key[k] = cfg
            positions.append(keys)
            contiguous.append(keys == list(range(keys[0], keys[0] + len(keys))))
        limits = [_NO_LIMIT if c is None else c.num_embeddings for c in table_of_key]
        return _KeyOrder(
            positions,
            contiguous,
            table_of_key,
            torch.tensor(limits, dtype=torch.int64, device=kjt.values().device),
            min(limits, default=_NO_LIMIT),
            any(c is None for c in table_of_key),
        )

    def _check_ids(self, kjt: KeyedJaggedTensor, order: _KeyOrder) -> None:
        values = kjt.values()
        if values.numel() == 0:
            return
        low, high = torch.stack(torch.aminmax(values)).tolist()
        if low >= 0 and high < order.min_limit:
            return  # one pass suffices when every id fits the smallest table
        per_key = torch.tensor(kjt.length_per_key(), device=values.device)
        limit = order.limit_per_key.repeat_interleave(per_key, output_size=values.numel())
        bad = (values < 0) | (values >= limit)
        if order.has_unread_keys:
            bad &= limit != _NO_LIMIT  # a key no table reads may hold anything
        if not bool(bad.any()):
            return
        first = int(bad.nonzero()[0])
        key = bisect.bisect_right(kjt.offset_per_key(), first) - 1
        cfg = order.table_of_key[key]
        assert cfg is not None  # keys no table reads have no limit
        raise ValueError(
            f"feature {kjt.keys()[key]!r} (table {cfg.name!r}) has id {int(values[first])} "
            f"outside [0, {cfg.num_embeddings})"
        )


def _cat(parts: list[TableInput]) -> TableInput:
    weights = None
    if parts[0].weights is not None:
        weights = torch.cat([p.weights for p in parts])  # type: ignore[misc]
    return TableInput(
        torch.cat([p.ids for p in parts]), torch.cat([p.lengths for p in parts]), weights
    )
