"""EmbeddingTable: one table's (local) weight and the sparse gradient recorded for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from recis.nn.config import EmbeddingBagConfig


@dataclass
class SparseGrad:
    """Gradient of a table in bag form, never densified.

    Row ``ids[j]`` of bag ``b`` (``offsets[b] <= j < offsets[b+1]``) receives
    ``grad_out[b] * per_sample_weights[j]`` (weight 1 when ``None``), divided by the
    bag length when ``mean``. Duplicate ids add up. The sparse optimizer kernels
    reduce this per unique row and apply the update in one pass.
    """

    ids: Tensor
    offsets: Tensor
    per_sample_weights: Tensor | None
    grad_out: Tensor
    mean: bool

    @staticmethod
    def cat(grads: list[SparseGrad]) -> SparseGrad:
        """Joins gradients of several backward passes (gradient accumulation)."""
        if len(grads) == 1:
            return grads[0]
        mean = grads[0].mean
        if any(g.mean != mean for g in grads):
            raise ValueError("cannot join sum- and mean-pooled gradients of one table")
        offsets, shift = [grads[0].offsets.new_zeros(1)], 0
        for g in grads:
            offsets.append(g.offsets[1:] + shift)
            shift += g.ids.numel()
        has_w = any(g.per_sample_weights is not None for g in grads)
        weights = None
        if has_w:
            weights = torch.cat(
                [
                    g.per_sample_weights
                    if g.per_sample_weights is not None
                    else torch.ones(g.ids.numel(), dtype=g.grad_out.dtype, device=g.ids.device)
                    for g in grads
                ]
            )
        return SparseGrad(
            torch.cat([g.ids for g in grads]),
            torch.cat(offsets),
            weights,
            torch.cat([g.grad_out for g in grads]),
            mean,
        )


class EmbeddingTable(nn.Module):
    """The weight of one embedding table (or of this rank's shard of it).

    ``weight`` is a buffer, not a parameter: embedding weights stay out of
    ``model.parameters()`` and are updated by a sparse optimizer from the
    :class:`SparseGrad` records that backward leaves here. ``row_offset`` and
    ``col_offset`` place a shard in the global ``config`` table.
    """

    def __init__(
        self,
        config: EmbeddingBagConfig,
        weight: Tensor,
        row_offset: int = 0,
        col_offset: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("weight", weight)
        self.row_offset = row_offset
        self.col_offset = col_offset
        self._grads: list[SparseGrad | Callable[[], SparseGrad]] = []
        # Autograd calls backward only for outputs that require grad, and the weight
        # does not; lookups take this leaf as an input so that their output does.
        self.grad_anchor = torch.zeros((), requires_grad=True)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def global_shape(self) -> tuple[int, int]:
        return (self.config.num_embeddings, self.config.embedding_dim)

    def record_grad(self, grad: SparseGrad | Callable[[], SparseGrad]) -> None:
        """Adds a gradient, or a function that makes it when it is first read (a sharded
        lookup's, whose all-to-all may still be landing)."""
        self._grads.append(grad)

    def sparse_grad(self) -> SparseGrad | None:
        """All gradient recorded since :meth:`zero_grad`, joined; ``None`` if none."""
        if not self._grads:
            return None
        joined = SparseGrad.cat(self._resolved())
        self._grads[:] = [joined]
        return joined

    def zero_grad(self) -> None:
        # Waits for gradients still landing: an exchange is never left unwaited.
        self._resolved()
        self._grads.clear()

    def _resolved(self) -> list[SparseGrad]:
        # The list is changed in place: assigning a module attribute goes through
        # nn.Module.__setattr__, a few microseconds per table and step.
        resolved = [g if isinstance(g, SparseGrad) else g() for g in self._grads]
        self._grads[:] = resolved
        return resolved

    def extra_repr(self) -> str:
        rows, dim = self.weight.shape
        return (
            f"name={self.name!r}, shard=[{self.row_offset}:{self.row_offset + rows}, "
            f"{self.col_offset}:{self.col_offset + dim}] of {self.global_shape}"
        )
