"""usable_cpus and idle_cores_hint: a CPU job that leaves most of its host idle hears of it."""

import pytest
import torch

from recis.distributed import cpu_threads


@pytest.fixture
def host(monkeypatch, tmp_path):
    """A host of ``cores`` cores (affinity), an optional cgroup quota, torch at ``threads``."""

    def make(cores: int, threads: int, cpu_max: str | None = None) -> None:
        monkeypatch.setattr(cpu_threads.os, "sched_getaffinity", lambda pid: set(range(cores)))
        path = tmp_path / "cpu.max"
        if cpu_max is not None:
            path.write_text(cpu_max + "\n")
        monkeypatch.setattr(cpu_threads, "_CPU_MAX", str(path))
        monkeypatch.setattr(cpu_threads, "_CFS_FILES", (str(tmp_path / "q"), str(tmp_path / "p")))
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)

    return make


def test_two_ranks_of_one_thread_on_32_cores_are_told_how_to_use_them(host):
    host(32, threads=1)
    hint = cpu_threads.idle_cores_hint(2)
    assert hint.startswith("this host's 2 ranks use 1 thread each: 2 of its 32 cores")
    assert "torch.set_num_threads(16)" in hint and "--threads_per_rank 16" in hint


@pytest.mark.parametrize(("cores", "ranks", "threads"), [(2, 2, 1), (32, 8, 2), (32, 2, 16)])
def test_ranks_using_half_the_cores_or_more_hear_nothing(host, cores, ranks, threads):
    host(cores, threads)
    assert cpu_threads.idle_cores_hint(ranks) is None


def test_a_container_cpu_quota_bounds_the_usable_cores(host, tmp_path, monkeypatch):
    host(64, threads=1, cpu_max="400000 100000")  # 4 CPUs
    assert cpu_threads.usable_cpus() == 4
    assert cpu_threads.idle_cores_hint(2) is None  # 2 of 4
    host(64, threads=1, cpu_max="max 100000")
    assert cpu_threads.usable_cpus() == 64
    # cgroup v1: quota -1 is no limit.
    monkeypatch.setattr(cpu_threads, "_CPU_MAX", str(tmp_path / "none"))
    (tmp_path / "q").write_text("250000\n")
    (tmp_path / "p").write_text("100000\n")
    assert cpu_threads.usable_cpus() == 3
    (tmp_path / "q").write_text("-1\n")
    assert cpu_threads.usable_cpus() == 64
