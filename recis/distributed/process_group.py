"""Device and backend selection, process-group set-up from torchrun's variables, seeding."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import random
from datetime import timedelta

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: this process's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else CPU.

    Any other value is taken as a torch device; asking for CUDA without it raises.
    ``"cuda"`` without an index is this process's GPU too, so that each of torchrun's
    ranks on a machine gets its own rather than all sharing GPU 0.

    Example::

        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto' or a torch device, got {device!r}") from e
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available")
    if resolved.index is None:
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return resolved


def resolve_backend(backend: str = "auto", device: torch.device | None = None) -> str:
    """``"auto"``: ``nccl`` for a CUDA device, ``gloo`` otherwise; else checked and returned.

    Example::

        >>> resolve_backend("auto", torch.device("cpu"))
        'gloo'
    """
    if backend == "auto":
        device = device if device is not None else resolve_device("auto")
        return "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl", "mpi", "ucc"):
        raise ValueError(f"backend must be 'auto', 'gloo', 'nccl', 'mpi' or 'ucc', got {backend!r}")
    if backend == "nccl" and device is not None and device.type != "cuda":
        raise ValueError(f"backend 'nccl' needs a CUDA device, got device {device}")
    return backend


def shutdown_distributed() -> None:
    """Destroys the default process group, after letting go of what still holds it.

    A group lives on after ``destroy_process_group`` while anything references it
    (``DistributedDataParallel`` does). gloo's worker threads then run into interpreter
    exit, and one that releases a finished collective's tensors while Python shuts
    down aborts the process ("terminate called without an active exception"), so a
    job that succeeded exits with SIGABRT. Collecting garbage first frees the models
    of a finished ``main()``, the group really ends, and its threads are joined while
    the interpreter still runs. Groups made by :func:`init_distributed` get this at
    exit; call it yourself after dropping your models when you made the group.

    Example::

        >>> main()                 # trains; its models are gone when it returns
        >>> shutdown_distributed()
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def _restart_safe_store(timeout: timedelta) -> dist.Store | None:
    """The store of this attempt of a torchrun job on one machine; None to let
    ``init_process_group`` make its own.

    torchrun's workers share its agent's TCPStore, which outlives a restart
    (``--max_restarts``): the keys of the attempt before (gloo's peer addresses,
    NCCL's unique id) are still in it, and the new workers can read them and connect
    to peers that are gone, or hang (pytorch#135712). On one machine the restart
    count names the attempt for every worker, so each attempt gets its own prefix.
    Agents on several machines count their restarts each their own way, so there
    rank 0 warns instead: ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` in torchrun's
    environment (c10d rendezvous) gives every attempt a new store.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    world = int(os.environ["WORLD_SIZE"])
    if int(os.environ.get("LOCAL_WORLD_SIZE", world)) != world:
        restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
        if restarts > 0 and os.environ["RANK"] == "0":
            logger.warning(
                "torchrun --max_restarts=%d over several machines with a shared TCPStore: a "
                "restart can read the attempt before's keys and hang (pytorch#135712); set "
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 where torchrun runs (c10d rendezvous)",
                restarts,
            )
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=False,
        timeout=timeout,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"recis/attempt_{attempt}", store)


def init_distributed(
    backend: str = "auto",
    device: str | torch.device = "auto",
    timeout: timedelta = timedelta(minutes=30),
) -> bool:
    """Joins the process group torchrun describes, unless one exists already.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them
    (a plain ``python train.py``) the job is single-process and nothing happens. On a
    GPU it also selects ``cuda:LOCAL_RANK``. A group created here is destroyed at
    interpreter exit. Returns whether this call created the group.

    Example::

        >>> init_distributed()   # under torchrun --nproc-per-node 2 ...
        True
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    present = [v for v in _TORCHRUN_VARS if v in os.environ]
    if not present:
        return False
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"found {present} but not {missing} in the environment: launch with torchrun "
            "(or set all of RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)"
        )
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = resolve_backend(backend, dev)
    store = _restart_safe_store(timeout)
    if store is None:
        dist.init_process_group(backend, timeout=timeout)
    else:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend, timeout=timeout, store=store, rank=rank, world_size=world)
    atexit.register(shutdown_distributed)
    logger.info("joined process group: rank %d of %d", dist.get_rank(), dist.get_world_size())
    return True


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def set_seed(seed: int) -> None:
    """Seeds Python's, NumPy's (when installed) and torch's (CPU and CUDA) generators.

    Example::

        >>> set_seed(42)
    """
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
