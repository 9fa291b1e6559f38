"""Whether the embedding tables a sharding plan puts on a host fit in its memory.

Tables held in host memory (CPU training) that do not fit are not refused by any
allocator: their pages are touched while they are initialised, and the kernel's OOM
killer then ends a rank with SIGKILL, minutes in, without a word about why. GPU
memory needs no such check: an allocation there that does not fit raises
``torch.cuda.OutOfMemoryError``.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

from recis.distributed.plan import ShardingPlan
from recis.distributed.types import ShardingError

# Above this share of the available memory the rest of training (activations,
# gradients, the data readers, checkpoint writes) may not fit: a warning.
TIGHT_SHARE = 0.9
_GIB = 2**30

_MEMINFO = "/proc/meminfo"
# cgroup v2, then v1: (limit, usage) files of this process's memory controller.
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def read_sys_file(path: str) -> str | None:
    """The stripped text of a small /proc or /sys file, or None where it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = read_sys_file(path)
    return int(text) if text and text.isdigit() else None  # cgroup v2: "max" for no limit


def available_host_memory() -> int | None:
    """Bytes this process's host can still give it: the kernel's ``MemAvailable``, or
    less under a cgroup memory limit (a container's); None where neither is known."""
    found: list[int] = []
    try:
        with open(_MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in _CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1: huge = none
            found.append(max(limit - usage, 0))
            break
    return min(found) if found else None


@dataclass(frozen=True)
class RankHost:
    """Where one rank keeps its tables: its host, whether in host memory, and how much
    memory that host has available (None: unknown)."""

    host: str
    tables_in_host_memory: bool
    available: int | None

    @staticmethod
    def here(tables_in_host_memory: bool) -> RankHost:
        return RankHost(socket.gethostname(), tables_in_host_memory, available_host_memory())


@dataclass(frozen=True)
class HostLoad:
    """What the ranks of one host ask of its memory: ``need[i]`` bytes for rank
    ``ranks[i]``; ``available`` is None when one of them could not tell."""

    host: str
    ranks: list[int]
    need: list[int]
    available: int | None

    @property
    def total(self) -> int:
        return sum(self.need)

    def shares(self, unit: int = _GIB, unit_name: str = "GiB") -> str:
        """``rank 0: 1.2, rank 1: 1.3 GiB`` (the first 8 ranks)."""
        first = zip(self.ranks[:8], self.need[:8], strict=True)
        shown = ", ".join(f"rank {r}: {n / unit:.1f}" for r, n in first)
        more = f", ... ({len(self.ranks)} ranks)" if len(self.ranks) > 8 else ""
        return f"{shown}{more} {unit_name}"


def host_loads(need: Sequence[int], ranks: Sequence[RankHost]) -> list[HostLoad]:
    """Per host, what ``need[r]`` bytes of host memory for each rank r that keeps its
    tables there (``ranks[r]``) add up to, against what the host has available."""
    by_host: dict[str, list[int]] = {}
    for r, where in enumerate(ranks):
        if where.tables_in_host_memory:
            by_host.setdefault(where.host, []).append(r)
    loads = []
    for host, members in by_host.items():
        reports = [ranks[r].available for r in members]
        known = [a for a in reports if a is not None]
        available = min(known) if len(known) == len(reports) else None
        loads.append(HostLoad(host, members, [need[r] for r in members], available))
    return loads


def check_plan_fits_hosts(plan: ShardingPlan, ranks: Sequence[RankHost]) -> str | None:
    """Raises :class:`ShardingError` when the weights and optimizer state that ``plan``
    puts on the ranks of one host (``ranks[r]`` for rank r) exceed the memory that host
    has available; returns a warning when they take more than :data:`TIGHT_SHARE` of
    it, else None. Every rank gets the same answer from the same ``ranks``.

    Example::

        >>> check_plan_fits_hosts(plan, [RankHost("node1", True, 8 << 30)] * 2)
        ShardingError: the sharding plan puts 12.5 GiB of embedding tables ...
    """
    tight = []
    for load in host_loads(plan.rank_memory(), ranks):
        available, total = load.available, load.total
        if available is None:  # a rank could not tell: no verdict on its host
            continue
        what = (
            f"the sharding plan puts {total / _GIB:.1f} GiB of embedding tables and "
            f"optimizer state on host {load.host!r} ({load.shares()})"
        )
        if total > available:
            raise ShardingError(
                f"{what} but it has {available / _GIB:.1f} GiB available: the ranks would "
                "be killed (SIGKILL) as they fill the tables. Spread them over more hosts, "
                "or give the tables fewer rows or a smaller dim (launch/train.py: "
                "--table_size, --embedding_dim)"
            )
        if total > TIGHT_SHARE * available:
            tight.append(
                f"{what} of its {available / _GIB:.1f} GiB available: training needs more "
                "(activations, gradients, data, checkpoint writes) and may run out"
            )
    return "; ".join(tight) or None
