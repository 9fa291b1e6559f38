"""Sparse optimizers: fused, lazy updates of embedding tables from their SparseGrads."""

from recis.optim.adagrad import SparseAdagrad, SparseRowWiseAdagrad
from recis.optim.adam import SparseAdam, SparseAdamW
from recis.optim.sgd import SparseSGD
from recis.optim.sparse_optimizer import SparseOptimizer

__all__ = [
    "SparseAdagrad",
    "SparseAdam",
    "SparseAdamW",
    "SparseOptimizer",
    "SparseRowWiseAdagrad",
    "SparseSGD",
]
