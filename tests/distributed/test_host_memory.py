"""Tables that do not fit a host's memory are refused before they are allocated,
naming the host and each rank's share, instead of the OOM killer ending a rank."""

from __future__ import annotations

import pytest
import torch

import recis.distributed.host_memory as host_memory
from recis.distributed import DistributedModelParallel, ShardingPlan, plan_sharding
from recis.distributed.host_memory import (
    RankHost,
    available_host_memory,
    check_plan_fits_hosts,
)
from recis.distributed.types import ShardingError
from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig
from recis.testing import run_distributed

GIB = 2**30


def _meta_model(rows: int, dim: int = 64) -> torch.nn.Module:
    model = torch.nn.Sequential()
    configs = [EmbeddingBagConfig(f"t{i}", rows, dim, [f"f{i}"]) for i in range(4)]
    model.add_module("ebc", EmbeddingBagCollection(configs, device="meta"))
    return model


def _plan(world: int, rows: int = 1 << 20) -> ShardingPlan:
    # 4 tables of 1M x 64 float32 plus row-wise Adagrad state: 4 x 260 MiB in all.
    return plan_sharding(
        _meta_model(rows),
        world_size=world,
        constraints=dict.fromkeys(["t0", "t1", "t2", "t3"], "row_wise"),
    )


def test_a_host_whose_ranks_need_more_than_it_has_is_named_with_each_share():
    plan = _plan(4)
    per_rank = plan.rank_memory()[0]
    hosts = [RankHost("a", True, 8 * GIB)] * 2 + [RankHost("b", True, per_rank)] * 2
    with pytest.raises(ShardingError) as refused:
        check_plan_fits_hosts(plan, hosts)
    message = str(refused.value)
    need = 2 * per_rank / GIB
    assert f"puts {need:.1f} GiB of embedding tables and optimizer state on host 'b'" in message
    assert f"(rank 2: {per_rank / GIB:.1f}, rank 3: {per_rank / GIB:.1f} GiB)" in message
    assert f"but it has {per_rank / GIB:.1f} GiB available" in message and "'a'" not in message


def test_tight_fits_warn_and_what_is_not_in_host_memory_or_unknown_is_not_counted():
    plan = _plan(2)
    need = sum(plan.rank_memory())
    assert check_plan_fits_hosts(plan, [RankHost("a", True, 2 * need)] * 2) is None
    warning = check_plan_fits_hosts(plan, [RankHost("a", True, int(need / 0.95))] * 2)
    assert warning is not None and "on host 'a'" in warning and "may run out" in warning
    # Tables on GPUs, or a host whose memory is unknown, are not checked.
    assert check_plan_fits_hosts(plan, [RankHost("a", False, 1)] * 2) is None
    assert check_plan_fits_hosts(plan, [RankHost("a", True, None)] * 2) is None
    # Two hosts of one rank each: each holds half.
    assert (
        check_plan_fits_hosts(plan, [RankHost("a", True, need), RankHost("b", True, need)]) is None
    )


def test_available_memory_is_the_smaller_of_the_kernels_and_a_cgroup_limits(tmp_path, monkeypatch):
    free = available_host_memory()  # this machine's
    assert free is not None and free > 0
    files = {
        "meminfo": "MemTotal: 8388608 kB\nMemAvailable: 4194304 kB\n",
        "limit": f"{GIB}\n",
        "usage": f"{GIB // 4}\n",
        "v2_none": "max\n",
        "v1_none": "9223372036854771712\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(host_memory, "_MEMINFO", str(tmp_path / "meminfo"))

    def cgroup(limit: str) -> int | None:
        monkeypatch.setattr(
            host_memory, "_CGROUP_FILES", [(str(tmp_path / limit), str(tmp_path / "usage"))]
        )
        return available_host_memory()

    assert cgroup("limit") == 3 * GIB // 4  # a container's limit, below the host's
    assert cgroup("v2_none") == cgroup("v1_none") == 4 * GIB  # no limit: MemAvailable
    assert cgroup("missing") == 4 * GIB


def _refused_on_every_rank(rows: int) -> str:
    try:
        DistributedModelParallel(_meta_model(rows), plan_sharding(_meta_model(rows), world_size=2))
    except ShardingError as e:
        return str(e)
    return "built"


def test_dmp_refuses_tables_larger_than_the_host_before_allocating_them():
    # 4 tables of 2^36 rows x 64: 64 TiB, on meta until the DMP would fill its shards.
    rows = 1 << 36
    with pytest.raises(ShardingError, match=r"GiB available: the ranks would be killed"):
        DistributedModelParallel(_meta_model(rows), plan_sharding(_meta_model(rows), world_size=1))
    messages = run_distributed(_refused_on_every_rank, 2, rows, timeout=90)
    assert messages[0] == messages[1] and "(rank 0: " in messages[0] and "rank 1: " in messages[0]
