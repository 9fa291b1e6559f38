"""Memory for embedding tables and their optimizer state, and the process's malloc policy
for the buffers a training step allocates and frees."""

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


def keep_freed_host_memory(trim_threshold_bytes: int = 256 << 20) -> bool:
    """Makes the C library's malloc keep the host memory a training step frees for the
    next step, instead of returning it to the OS, which faults it in and zeroes it again
    page by page (on a VM each fault costs several microseconds).

    Process-wide, for every later allocation: blocks up to 32 MiB come from malloc's
    heap rather than a mapping of their own, and up to ``trim_threshold_bytes`` of free
    memory at the top of a heap stay mapped. glibc only: elsewhere nothing changes and
    it returns False. A threshold outside [1, 2**31 - 1] (glibc takes an int) raises
    RuntimeError. The :class:`~recis.framework.trainer.Trainer` calls it unless
    ``TrainingArguments.keep_freed_host_memory`` is False.

    Example::

        >>> keep_freed_host_memory()  # before building the model and training
        True
    """
    if isinstance(trim_threshold_bytes, bool) or not isinstance(trim_threshold_bytes, int):
        raise TypeError(
            f"keep_freed_host_memory: trim_threshold_bytes must be an int, "
            f"got {trim_threshold_bytes!r}"
        )
    return bool(torch.ops.recis.keep_freed_host_memory(trim_threshold_bytes))
