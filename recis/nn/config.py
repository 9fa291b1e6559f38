"""EmbeddingBagConfig: what one embedding table is."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

POOLINGS = ("sum", "mean")


def default_init(num_embeddings: int) -> Callable[[Tensor], None]:
    """TorchRec's default: uniform in ±sqrt(1 / num_embeddings)."""
    bound = math.sqrt(1.0 / num_embeddings)

    def init(weight: Tensor) -> None:
        with torch.no_grad():
            weight.uniform_(-bound, bound)

    return init


@dataclass
class EmbeddingBagConfig:
    """One embedding table, pooled per bag, serving one or more sparse features.

    ``init_fn(weight)`` fills a weight tensor in place from torch's global RNG. It is
    called on blocks of rows at full width, each under its own seed
    (:func:`recis.nn.table_init.init_table_part`), so that a table starts with the
    same values built whole or sharded by any plan: it must not depend on how many
    rows it is given.

    Example::

        >>> EmbeddingBagConfig("t_user", num_embeddings=1000, embedding_dim=16,
        ...                    feature_names=["user_id"], pooling="mean")
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: list[str] = field(default_factory=list)
    pooling: str = "sum"
    init_fn: Callable[[Tensor], Any] | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(
                f"EmbeddingBagConfig name must be a non-empty string, got {self.name!r}"
            )
        if int(self.num_embeddings) <= 0:
            raise ValueError(
                f"table {self.name!r}: num_embeddings must be > 0, got {self.num_embeddings}"
            )
        if int(self.embedding_dim) <= 0:
            raise ValueError(
                f"table {self.name!r}: embedding_dim must be > 0, got {self.embedding_dim}"
            )
        self.feature_names = list(self.feature_names)
        if not self.feature_names:
            raise ValueError(f"table {self.name!r}: feature_names must name at least one feature")
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"table {self.name!r}: duplicate feature names {self.feature_names}")
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"table {self.name!r}: pooling must be one of {POOLINGS}, got {self.pooling!r}"
            )

    def initializer(self) -> Callable[[Tensor], Any]:
        return self.init_fn or default_init(self.num_embeddings)

    @classmethod
    def from_torchrec(cls, cfg: Any) -> EmbeddingBagConfig:
        """From a ``torchrec.modules.embedding_configs.EmbeddingBagConfig``."""
        pooling = getattr(cfg.pooling, "name", str(cfg.pooling)).lower()
        init_fn = cfg.init_fn
        if init_fn is None and cfg.weight_init_min is not None and cfg.weight_init_max is not None:
            low, high = cfg.weight_init_min, cfg.weight_init_max

            def init_fn(weight: Tensor) -> None:
                with torch.no_grad():
                    weight.uniform_(low, high)

        return cls(
            cfg.name,
            cfg.num_embeddings,
            cfg.embedding_dim,
            list(cfg.feature_names),
            pooling,
            init_fn,
        )
