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

import time

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
