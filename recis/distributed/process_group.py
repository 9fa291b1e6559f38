"""Process-group set-up for a torchrun-launched job."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_distributed(
    backend: str | None = None, timeout_s: float = 1800.0
) -> tuple[int, int, torch.device]:
    """Joins the job's default process group from torchrun's environment variables.

    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``; with
    nccl each process uses GPU ``$LOCAL_RANK``. Without ``$WORLD_SIZE`` (a plain
    ``python`` run) nothing is initialised and the job is one rank. Returns
    ``(rank, world_size, device)``; calling it again returns the same.

    Example::

        >>> rank, world, device = init_distributed()
        >>> dmp = DistributedModelParallel(model, device=device)
    """
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise RuntimeError("backend 'nccl' needs a CUDA GPU; use 'gloo' on CPU")
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size(), device
