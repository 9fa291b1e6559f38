import torch
import torch.distributed as dist

from recis.distributed import init_distributed
from recis.testing import free_port, run_distributed


def _joined():
    # run_distributed already joined the group: init_distributed reuses it.
    rank, world, device = init_distributed(backend="gloo")
    assert (rank, world, device) == (dist.get_rank(), dist.get_world_size(), torch.device("cpu"))
    return world


def test_init_distributed_reuses_and_starts_groups(monkeypatch):
    assert run_distributed(_joined, 2) == [2, 2]
    # Not launched by torchrun: one rank, nothing initialised.
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed(backend="gloo") == (0, 1, torch.device("cpu"))
    assert not dist.is_initialized()
    # Launched (world of one): joins and can be destroyed.
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    try:
        assert init_distributed(backend="gloo")[:2] == (0, 1)
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
