"""Sparse-feature data structures (pure data, no kernels)."""

from recis.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor
from recis.sparse.keyed_tensor import KeyedTensor

__all__ = ["JaggedTensor", "KeyedJaggedTensor", "KeyedTensor"]
