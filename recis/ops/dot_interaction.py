"""DLRM's pairwise dot interaction, fused (CPU kernel) with its autograd."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import recis  # noqa: F401  (loads the kernels)
from recis.ops import reference


class _DotInteraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, dense: Tensor, embeddings: Tensor) -> Tensor:
        ctx.save_for_backward(dense, embeddings)
        return torch.ops.recis.dot_interaction(dense, embeddings)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        dense, embeddings = ctx.saved_tensors
        return torch.ops.recis.dot_interaction_backward(grad, dense, embeddings)


def dot_interaction(dense: Tensor, embeddings: Tensor) -> Tensor:
    """``[dense, x_i · x_j for every pair i < j]`` with ``x = (dense, e_1, ..., e_F)``.

    ``dense`` is ``[B, D]`` and ``embeddings`` ``[B, F * D]`` (F vectors of dim D side
    by side, as an ``EmbeddingBagCollection`` returns them). Returns
    ``[B, D + (F + 1) F / 2]``, pairs in row-major order of the strict upper triangle
    (``torch.triu_indices(F + 1, F + 1, 1)``). Differentiable. On CPU one fused kernel
    does what bmm, a gather of the triangle and two concatenations do; elsewhere it
    runs :func:`recis.ops.reference.dot_interaction`.

    Example::

        >>> out = dot_interaction(torch.ones(2, 4), torch.ones(2, 8))  # F = 2
        >>> out[0]
        tensor([1., 1., 1., 1., 4., 4., 4.])
    """
    if dense.device.type != "cpu":
        return reference.dot_interaction(dense, embeddings)
    return _DotInteraction.apply(dense, embeddings)
