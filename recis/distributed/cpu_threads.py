"""How many of a host's cores the ranks of a CPU job on it use.

torchrun sets ``OMP_NUM_THREADS=1`` for every worker when it starts more than one, so
a CPU job of 2 ranks on a 32-core host trains on 2 cores unless told otherwise.
"""

from __future__ import annotations

import math
import os

import torch

from recis.distributed.host_memory import read_sys_file

# cgroup v2, then v1: this process's CPU quota and period (a container's CPU limit).
_CPU_MAX = "/sys/fs/cgroup/cpu.max"
_CFS_FILES = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cgroup_cpus() -> float | None:
    """The CPUs a cgroup quota allows (``quota / period``), or None without one."""
    text = read_sys_file(_CPU_MAX)
    if text is not None:
        quota, _, period = text.partition(" ")
        if quota != "max" and quota.isdigit() and period.isdigit():
            return int(quota) / int(period)
        return None
    quota, period = (read_sys_file(p) for p in _CFS_FILES)
    if quota and period and quota.lstrip("-").isdigit() and period.isdigit():
        return int(quota) / int(period) if int(quota) > 0 else None  # v1: -1 = none
    return None


def usable_cpus() -> int:
    """The cores this process may run on: its affinity, within a cgroup CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_cpus()
    if quota is not None:
        cpus = min(cpus or 1, max(1, math.ceil(quota)))
    return max(1, cpus or 1)


def idle_cores_hint(local_world_size: int) -> str | None:
    """A line for a CPU job whose ``local_world_size`` ranks on this host, at torch's
    current threads each, leave more than half of its cores idle (torchrun's default
    of one thread per rank); None otherwise.

    Example::

        >>> idle_cores_hint(2)   # 2 ranks of 1 thread on 32 cores
        'this host's 2 ranks use 1 thread each: 2 of its 32 cores; ...'
    """
    cores, threads = usable_cpus(), torch.get_num_threads()
    if threads * local_world_size * 2 >= cores:
        return None
    share = max(1, cores // local_world_size)
    return (
        f"this host's {local_world_size} rank{'s' if local_world_size > 1 else ''} use "
        f"{threads} thread{'s' if threads > 1 else ''} each: {threads * local_world_size} "
        f"of its {cores} cores (torchrun sets OMP_NUM_THREADS=1 when it starts several); "
        f"torch.set_num_threads({share}) in each rank (launch/train.py: --threads_per_rank "
        f"{share}) uses them all"
    )
