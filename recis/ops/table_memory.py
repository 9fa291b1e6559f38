"""Memory for embedding tables and their optimizer state."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import recis  # noqa: F401  (loads the kernels)


def empty_table(
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """An uninitialised tensor for a table, its optimizer state, or another large
    buffer the kernels fill (a collection's pooled output).

    On CPU, one of 2 MiB or more is 2 MiB-aligned and advised to Linux as transparent
    huge pages: lookups and sparse updates touch random rows, and with 4 KiB pages
    almost every row costs a TLB miss. When it is freed its memory is kept for the next
    request of the same size (buffers up to 256 MiB, 512 MiB in all), so a per-step
    buffer is not faulted in and zeroed by the OS every step. On other devices this is
    ``torch.empty``.

    Example::

        >>> w = empty_table((1_000_000, 64))  # then initialise it, e.g. w.uniform_()
    """
    device = torch.device(device if device is not None else "cpu")
    if device.type != "cpu":
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    return torch.ops.recis.empty_table([int(s) for s in shape], dtype)
