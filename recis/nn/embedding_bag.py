"""EmbeddingBagCollection: pooled lookups of several tables on one device."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recis.nn.batch_inputs import BatchReader
from recis.nn.config import EmbeddingBagConfig
from recis.nn.lookup import Bags, pool_tables
from recis.nn.table import EmbeddingTable
from recis.nn.table_init import init_table_part
from recis.ops.table_memory import empty_table
from recis.sparse import KeyedJaggedTensor, KeyedTensor
from recis.sparse._validate import offsets_from_lengths


class EmbeddingBagCollection(nn.Module):
    """Pooled embeddings of several tables, unsharded.

    The output is a :class:`KeyedTensor` ``[B, Σ dims]`` with one block per feature,
    in table order then feature order. Weights are buffers, not parameters: hand
    them to a sparse optimizer with :func:`recis.nn.filter_out_sparse_param`.

    Example::

        >>> ebc = EmbeddingBagCollection([
        ...     EmbeddingBagConfig("t_user", 100, 8, ["user"]),
        ...     EmbeddingBagConfig("t_item", 50, 4, ["item", "item_hist"], pooling="mean"),
        ... ])
        >>> kjt = KeyedJaggedTensor(["user", "item", "item_hist"],
        ...                         torch.tensor([1, 2, 3, 4, 5, 6]),
        ...                         torch.tensor([1, 1, 1, 1, 0, 2]))
        >>> ebc(kjt).values().shape
        torch.Size([2, 16])
    """

    def __init__(
        self, tables: Sequence[EmbeddingBagConfig], device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        tables = list(tables)
        names = [t.name for t in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"table names must be unique, got {names}")
        features = [f for t in tables for f in t.feature_names]
        if len(set(features)) != len(features):
            raise ValueError(f"a feature may feed only one table, got {features}")
        device = torch.device(device or "cpu")
        self._configs = tables
        self._read = BatchReader(tables)
        self.tables = nn.ModuleDict()
        seed = torch.initial_seed()
        for cfg in tables:
            weight = empty_table((cfg.num_embeddings, cfg.embedding_dim), device=device)
            if device.type != "meta":
                init_table_part(cfg, weight, seed=seed)
            self.tables[cfg.name] = EmbeddingTable(cfg, weight)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return list(self._configs)

    def feature_names(self) -> list[str]:
        return [f for cfg in self._configs for f in cfg.feature_names]

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        tables, bags = [], []
        inputs = self._read(features, check_ids=False)
        for cfg, (ids, lengths, weights) in zip(self._configs, inputs, strict=True):
            tables.append(self.tables[cfg.name])
            bags.append(
                Bags(
                    ids,
                    offsets_from_lengths(lengths),
                    weights,
                    cfg.pooling == "mean",
                    len(cfg.feature_names),
                )
            )
        dims = [cfg.embedding_dim for cfg in self._configs for _ in cfg.feature_names]
        try:
            values = pool_tables(tables, bags, features.stride())
        except RuntimeError as kernel_error:
            # The lookup kernels range-check every id as they pool (a separate pass
            # over the ids cost 1.6 ms beside a 22 ms forward of 8 x 164k ids); only the
            # reader can name the feature and table of a bad one.
            try:
                self._read.check_ids(features)
            except ValueError as named:
                raise named from kernel_error
            raise
        return KeyedTensor(self.feature_names(), dims, values)
