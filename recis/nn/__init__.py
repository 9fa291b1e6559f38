"""Embedding modules (unsharded) and their table/gradient types."""

from recis.nn.config import EmbeddingBagConfig
from recis.nn.embedding_bag import EmbeddingBagCollection
from recis.nn.lookup import Bags, pool_tables, table_lookup
from recis.nn.sparse_params import filter_out_sparse_param
from recis.nn.table import EmbeddingTable, SparseGrad

__all__ = [
    "Bags",
    "EmbeddingBagCollection",
    "EmbeddingBagConfig",
    "EmbeddingTable",
    "SparseGrad",
    "filter_out_sparse_param",
    "pool_tables",
    "table_lookup",
]
