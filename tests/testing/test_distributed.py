import time

import pytest
import torch
import torch.distributed as dist

from recis.testing import DistributedTestError, run_distributed


def all_to_all_ranks() -> list[int]:
    """Each rank sends rank*10+dest to every dest, and returns what it received."""
    rank, world = dist.get_rank(), dist.get_world_size()
    send = torch.tensor([rank * 10 + dest for dest in range(world)], dtype=torch.long)
    recv = torch.empty(world, dtype=torch.long)
    dist.all_to_all_single(recv, send)
    return recv.tolist()


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_run_a_real_all_to_all(world_size):
    results = run_distributed(all_to_all_ranks, world_size)
    for rank, received in enumerate(results):
        assert received == [src * 10 + rank for src in range(world_size)]


def fail_on_rank_one() -> None:
    if dist.get_rank() == 1:
        raise ValueError("boom on purpose")
    dist.barrier()  # rank 0 waits here for a rank that never comes


def test_a_failing_rank_fails_the_test_quickly_with_its_traceback():
    start = time.monotonic()
    with pytest.raises(DistributedTestError) as err:
        run_distributed(fail_on_rank_one, 2, timeout=60)
    assert "rank 1 failed" in str(err.value)
    assert "ValueError: boom on purpose" in str(err.value)
    assert time.monotonic() - start < 30


def hang() -> None:
    time.sleep(60)


def test_a_hanging_rank_times_out():
    with pytest.raises(DistributedTestError, match="did not finish within"):
        run_distributed(hang, 2, timeout=5)


def returns_args(a, b=0):
    return (dist.get_rank(), a + b)


def test_arguments_and_results_travel():
    assert run_distributed(returns_args, 2, 1, b=2) == [(0, 3), (1, 3)]


def returns_a_tensor():
    return torch.full((3,), float(dist.get_rank()))


def test_tensors_returned_by_ranks_survive_their_exit():
    first, second = run_distributed(returns_a_tensor, 2)
    assert torch.equal(first, torch.zeros(3)) and torch.equal(second, torch.ones(3))
