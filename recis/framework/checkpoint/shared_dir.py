"""Whether every rank sees one ``output_dir``: a file system shared by all nodes.

Each rank writes its own shards into the checkpoint folder and, on resume, may read
any rank's. A path that is each node's local disk (or a ``memory://`` URL, one per
process) lets every write succeed and leaves checkpoints whose files are spread over
the nodes: the job learns of it only when a resume finds none. So the ranks check,
in a ring, that each sees a file that another rank wrote: one ``exists`` each, and
every split of the ranks into groups that see different files breaks some link of
the ring.
"""

from __future__ import annotations

import socket
import time

import torch.distributed as dist

from recis.distributed.comm import all_gather_objects, rank_and_world
from recis.framework.checkpoint.storage import Storage

# How long a rank looks for another rank's file before deciding it cannot see it:
# some shared file systems show a new file on other nodes only after a delay.
VISIBILITY_WAIT_S = 5.0


def next_writer(written: list[str | None], rank: int) -> int | None:
    """The first rank after ``rank`` (cyclically) that wrote a file (``written[r]``
    not None); None when no other rank did."""
    world = len(written)
    for step in range(1, world):
        other = (rank + step) % world
        if written[other] is not None:
            return other
    return None


def sees_next_writer(
    storage: Storage,
    written: list[str | None],
    hosts: list[str],
    rank: int,
    wait_s: float = VISIBILITY_WAIT_S,
) -> str | None:
    """Checks that this rank sees the file the next rank wrote (``written[r]``: a path
    rank ``r`` wrote, or None; ``hosts[r]``: its host name); returns None when it
    does, else an error that names both ranks, their hosts and the way out.

    Example::

        >>> sees_next_writer(storage, ["/ckpt/.probe0", "/ckpt/.probe1"], ["a", "b"], 0)
        # None when rank 0 sees /ckpt/.probe1
    """
    other = next_writer(written, rank)
    if other is None:
        return None
    path = written[other]
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while not storage.exists(path):
        if time.monotonic() >= deadline:
            return (
                f"it is not one directory shared by all ranks: rank {rank} (host "
                f"{hosts[rank]}) does not see {storage.url(path)}, which rank {other} "
                f"(host {hosts[other]}) wrote. Every rank writes its shards there and "
                "reads any rank's on resume: give output_dir a file system that every "
                "node mounts (NFS, Lustre, ...) or an object store URL (s3://...)"
            )
        time.sleep(delay)
        delay = min(2 * delay, 1.0)
    return None


def ranks_see_one_directory(
    storage: Storage, written: str | None, group: dist.ProcessGroup | None = None
) -> str | None:
    """All ranks of ``group`` call it together, each with a file it wrote (None:
    none): each looks for the next writer's. Returns, on every rank alike, the first
    error of :func:`sees_next_writer`, or None when every rank saw its file."""
    rank, world = rank_and_world(group)
    if world == 1:
        return None
    paths, hosts = zip(*all_gather_objects((written, socket.gethostname()), group), strict=True)
    seen = sees_next_writer(storage, list(paths), list(hosts), rank)
    return next((e for e in all_gather_objects(seen, group) if e), None)
