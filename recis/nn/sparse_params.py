"""filter_out_sparse_param: the embedding tables of a model, for the sparse optimizer."""

from __future__ import annotations

from torch import nn

from recis.nn.table import EmbeddingTable


def filter_out_sparse_param(model: nn.Module) -> dict[str, EmbeddingTable]:
    """Every :class:`EmbeddingTable` in ``model``, by table name.

    These are what a sparse optimizer updates; ``model.parameters()`` holds the
    rest (the dense part), for a ``torch.optim`` optimizer.

    Example::

        >>> sparse_opt = SparseAdagrad(filter_out_sparse_param(model), lr=0.01)
        >>> dense_opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    """
    tables: dict[str, EmbeddingTable] = {}
    for path, module in model.named_modules():
        if isinstance(module, EmbeddingTable):
            if module.name in tables and tables[module.name] is not module:
                raise ValueError(
                    f"two embedding tables are named {module.name!r} (second at {path!r}); "
                    "table names must be unique within a model"
                )
            tables[module.name] = module
    return tables
