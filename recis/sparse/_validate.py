"""Shared checks of jagged inputs; every failure is a ValueError naming the problem."""

from __future__ import annotations

import torch
from torch import Tensor

INDEX_DTYPES = (torch.int32, torch.int64)


def check_index_tensor(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.dtype not in INDEX_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")


def check_jagged(values: Tensor, lengths: Tensor, weights: Tensor | None, what: str) -> None:
    """Checks that ``lengths`` (non-negative) partition ``values`` (and ``weights``)."""
    check_index_tensor(f"{what} values", values)
    check_index_tensor(f"{what} lengths", lengths)
    if lengths.numel() and bool((lengths < 0).any()):
        bad = int(torch.nonzero(lengths < 0)[0])
        raise ValueError(
            f"{what} lengths must be non-negative; lengths[{bad}] = {int(lengths[bad])}"
        )
    total = int(lengths.sum()) if lengths.numel() else 0
    if total != values.numel():
        raise ValueError(f"{what} lengths sum to {total} but there are {values.numel()} values")
    if weights is not None:
        if not isinstance(weights, Tensor) or not weights.is_floating_point():
            raise ValueError(f"{what} weights must be a floating-point tensor")
        if weights.shape != values.shape:
            raise ValueError(
                f"{what} weights must have one entry per value: {tuple(weights.shape)} "
                f"vs {tuple(values.shape)}"
            )


def offsets_from_lengths(lengths: Tensor) -> Tensor:
    out = torch.zeros(lengths.numel() + 1, dtype=lengths.dtype, device=lengths.device)
    torch.cumsum(lengths, 0, out=out[1:])
    return out
