"""Pieces shared by the CTR models: table configs, MLPs, loss + metrics, input checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recis.framework.metrics import Predictions, add_metric
from recis.io.criteo import SPARSE_NAMES, default_table_sizes
from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig


def criteo_tables(
    table_sizes: int | Sequence[int] | None = None,
    embedding_dim: int = 16,
    feature_names: Sequence[str] = SPARSE_NAMES,
    pooling: str = "sum",
) -> list[EmbeddingBagConfig]:
    """One table ``t_<feature>`` per categorical feature.

    ``table_sizes``: one int for all, one per feature, or ``None`` for
    :func:`recis.io.default_table_sizes`.

    Example::

        >>> [c.name for c in criteo_tables(1000, 8)][:2]
        ['t_C1', 't_C2']
    """
    names = list(feature_names)
    if table_sizes is None:
        sizes = default_table_sizes()
        if len(sizes) != len(names):
            raise ValueError(f"give table_sizes for the {len(names)} features {names}")
    elif isinstance(table_sizes, int):
        sizes = [table_sizes] * len(names)
    else:
        sizes = list(table_sizes)
    if len(sizes) != len(names):
        raise ValueError(f"{len(sizes)} table sizes for {len(names)} features")
    return [
        EmbeddingBagConfig(f"t_{f}", int(n), embedding_dim, [f], pooling)
        for f, n in zip(names, sizes, strict=True)
    ]


def mlp(in_features: int, layers: Sequence[int], last_activation: bool = True) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (and after the last)."""
    modules: list[nn.Module] = []
    width = in_features
    for i, out in enumerate(layers):
        modules.append(nn.Linear(width, out))
        if last_activation or i < len(layers) - 1:
            modules.append(nn.ReLU())
        width = out
    return nn.Sequential(*modules)


def build_ebc(
    tables: Sequence[EmbeddingBagConfig] | None,
    table_sizes: int | Sequence[int] | None,
    embedding_dim: int,
    device: torch.device | str | None,
) -> EmbeddingBagCollection:
    configs = list(tables) if tables is not None else criteo_tables(table_sizes, embedding_dim)
    if not configs:
        raise ValueError("a model needs at least one embedding table")
    return EmbeddingBagCollection(configs, device=device)


def shared_embedding_dim(ebc: EmbeddingBagCollection, model: str) -> int:
    """The one embedding dim of all of ``ebc``'s tables (``model`` needs them equal)."""
    dims = {c.name: c.embedding_dim for c in ebc.embedding_bag_configs()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"{model} needs one embedding dim for all tables, got {dims}")
    return next(iter(dims.values()))


def check_dense(batch: dict, num_dense: int) -> Tensor:
    for key in ("dense", "sparse", "label"):
        if key not in batch:
            raise ValueError(f"batch lacks {key!r} (it has {sorted(batch)})")
    dense = batch["dense"]
    if dense.dim() != 2 or dense.shape[1] != num_dense:
        raise ValueError(f"batch['dense'] must be [B, {num_dense}], got {tuple(dense.shape)}")
    return dense


def ctr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean BCE-with-logits; reports ``loss`` and ``auc`` (Predictions) via add_metric."""
    logits = logits.reshape(-1)
    labels = labels.reshape(-1).to(logits.dtype)
    if logits.shape != labels.shape:
        raise ValueError(f"{logits.numel()} logits but {labels.numel()} labels")
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    add_metric("loss", loss.detach())
    add_metric("auc", Predictions(torch.sigmoid(logits.detach()), labels.detach()))
    return loss
