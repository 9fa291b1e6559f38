"""Sharded forward (and backward gradients) equal the unsharded collection's."""

import copy

import pytest
import torch
import torch.distributed as dist

from recis.distributed import (
    COLUMN_WISE,
    DATA_PARALLEL,
    ROW_WISE,
    TABLE_ROW_WISE,
    TABLE_WISE,
    DistributedInputError,
    ShardedEmbeddingBagCollection,
    plan_sharding,
)
from recis.nn import EmbeddingBagCollection
from recis.sparse import JaggedTensor, KeyedJaggedTensor
from recis.testing import run_distributed
from tests.distributed.helpers import configs, dense_grad, global_table, make_batch

ALL_TYPES = [TABLE_WISE, ROW_WISE, COLUMN_WISE, TABLE_ROW_WISE, DATA_PARALLEL]
MIXED = {
    "t_sum": ROW_WISE,
    "t_mean": COLUMN_WISE,
    "t_small": DATA_PARALLEL,
    "t_wide": TABLE_ROW_WISE,
}


def _dense_grads(ebc) -> dict[str, torch.Tensor]:
    return {name: dense_grad(t.sparse_grad(), t.weight) for name, t in ebc.tables.items()}


def _check_plan(constraints, local_world_size, weighted, empty, seed, sizes=None):
    rank, world = dist.get_rank(), dist.get_world_size()
    # Uneven batch sizes: rank r has sizes[r] samples (default 2 + r); rank 1 may have
    # features with no ids.
    sizes = sizes or [2 + r for r in range(world)]
    torch.manual_seed(1)
    ebc = EmbeddingBagCollection(configs())
    plan = plan_sharding(
        ebc, world_size=world, constraints=constraints, local_world_size=local_world_size
    )
    sebc = ShardedEmbeddingBagCollection(copy.deepcopy(ebc), plan)
    if weighted == "rank0":  # per-sample weights on rank 0's batch only
        weighted = rank == 0
    kjt = make_batch(sizes[rank], seed + rank, weighted, empty if rank == 1 else ())
    want = ebc(kjt)
    got = sebc(kjt)
    assert got.keys() == want.keys()
    torch.testing.assert_close(got.values(), want.values(), rtol=1e-5, atol=1e-6)
    # Backward: every shard's recorded gradient, scaled back by world size and summed
    # over ranks, equals the sum of every rank's unsharded gradient.
    upstream = torch.randn_like(want.values())
    (got.values() * upstream).sum().backward()
    (want.values() * upstream).sum().backward()
    expect = _dense_grads(ebc)
    for name in expect:  # same order on every rank
        dist.all_reduce(expect[name])
    for name, table in sebc.tables.items():
        shard_grad = dense_grad(table.sparse_grad(), table.weight)
        total = expect[name]
        r0, c0 = table.row_offset, table.col_offset
        ref = total[r0 : r0 + shard_grad.shape[0], c0 : c0 + shard_grad.shape[1]] / world
        torch.testing.assert_close(shard_grad, ref, rtol=1e-5, atol=1e-6)
    _check_comm_bytes(plan, sebc.comm_bytes(), kjt, sizes)
    # Shards hold exactly the unsharded values.
    for name, full in ebc.tables.items():
        if plan.tables[name].sharding_type != DATA_PARALLEL:
            got = global_table(
                sebc.tables[name] if name in sebc.tables else None,  # noqa: SIM401
                *full.global_shape,
            )
            torch.testing.assert_close(got, full.weight)
    return sebc.comm_bytes()


def _check_comm_bytes(plan, stats, kjt, batches):
    """The accounting matches what the plan must move: pooled blocks exactly, ids at
    least once per remote shard that needs them."""
    rank, world = dist.get_rank(), dist.get_world_size()
    out_fwd = out_bwd = ids_min = 0
    for cfg in configs():
        t = plan.tables[cfg.name]
        if t.sharding_type == DATA_PARALLEL:
            continue
        nf = len(cfg.feature_names)
        ids = torch.cat([kjt[f].values() for f in cfg.feature_names])
        for shard in t.shards:
            if shard.rank == rank:
                out_fwd += 4 * nf * shard.cols * (sum(batches) - batches[rank])
            else:
                out_bwd += 4 * nf * shard.cols * batches[rank]
                in_rows = (ids >= shard.row_offset) & (ids < shard.row_offset + shard.rows)
                ids_min += 8 * int(in_rows.sum())
    assert stats.get("output_dist", 0) == out_fwd, (stats, out_fwd)
    assert stats.get("output_dist_backward", 0) == out_bwd, (stats, out_bwd)
    assert stats.get("input_dist", 0) >= ids_min
    has_dp = any(t.sharding_type == DATA_PARALLEL for t in plan.tables.values())
    sends_replica_grads = has_dp and world > 1 and batches[rank] > 0
    assert (stats.get("data_parallel_backward", 0) > 0) == sends_replica_grads


def forward_all_types():
    world = dist.get_world_size()
    # Every type on 1 and 2 ranks; a few on 3 and 4 (uneven splits, cost of spawning 4).
    kinds = {1: ALL_TYPES, 2: ALL_TYPES, 3: [ROW_WISE], 4: []}[world]
    cases = [{c.name: kind for c in configs()} for kind in kinds] + [MIXED]
    stats = []
    for i, cons in enumerate(cases):
        for weighted in (False, True):
            stats.append(_check_plan(cons, None, weighted, ("f_a", "f_c"), 10 * i + weighted))
    stats.append(_check_plan(MIXED, None, "rank0", (), 77))
    if world == 4:
        # table_row_wise over two nodes of two ranks.
        _check_plan({c.name: TABLE_ROW_WISE for c in configs()}, 2, True, ("f_e",), 99)
    return stats


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_forward_and_grads_match_unsharded(world_size):
    stats = run_distributed(forward_all_types, world_size, timeout=120)
    if world_size > 1:
        # A table-wise plan moves ids out and pooled rows back on some rank.
        assert any(s.get("output_dist", 0) > 0 for per_rank in stats for s in per_rank[:1])


def forward_with_a_rank_without_samples():
    # What a rank runs once its eval data ended while others still evaluate.
    for i, kind in enumerate([*ALL_TYPES, None]):
        cons = MIXED if kind is None else {c.name: kind for c in configs()}
        for weighted in (False, True):
            _check_plan(cons, None, weighted, (), 50 + 2 * i + weighted, sizes=[3, 0])


def test_a_rank_with_zero_samples_takes_part():
    run_distributed(forward_with_a_rank_without_samples, 2, timeout=120)


def shuffled_keys():
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1)
    ebc = EmbeddingBagCollection(configs())
    kjt = make_batch(3 + rank, 40 + rank, weighted=True)
    # Keys in another order (t_sum's two features apart) plus a key no table reads,
    # holding ids no table has.
    order = ["f_e", "f_b", "f_d", "f_a", "f_c"]
    junk_lengths = torch.zeros(kjt.stride(), dtype=torch.long)
    junk_lengths[0] = 2
    junk = JaggedTensor(torch.tensor([-1, 10**9]), junk_lengths, torch.ones(2))
    shuffled = KeyedJaggedTensor.from_jagged(
        [*order, "junk"], [*(kjt[f] for f in order), junk], stride=kjt.stride()
    )
    want = ebc(kjt).values()
    for kind in [*ALL_TYPES, None]:
        cons = MIXED if kind is None else {c.name: kind for c in configs()}
        plan = plan_sharding(ebc, world_size=world, constraints=cons)
        sebc = ShardedEmbeddingBagCollection(copy.deepcopy(ebc), plan)
        got = sebc(shuffled)
        assert got.keys() == ebc.feature_names()
        torch.testing.assert_close(got.values(), want, rtol=1e-5, atol=1e-6)


def test_batch_keys_in_any_order_with_unread_keys():
    run_distributed(shuffled_keys, 2, timeout=60)


def bad_inputs():
    rank = dist.get_rank()
    torch.manual_seed(1)
    ebc = EmbeddingBagCollection(configs())
    plan = plan_sharding(ebc, constraints={"t_sum": ROW_WISE, "t_small": DATA_PARALLEL})
    sebc = ShardedEmbeddingBagCollection(copy.deepcopy(ebc), plan)
    messages = []
    # 1. An id out of range on rank 1 only: every rank raises, naming rank 1 and the feature.
    kjt = make_batch(3, rank)
    if rank == 1:
        values = kjt.values().clone()
        values[0] = 1000  # first id of f_a
        kjt = KeyedJaggedTensor(kjt.keys(), values, kjt.lengths())
        assert kjt["f_a"].values().numel() > 0
    try:
        sebc(kjt)
    except DistributedInputError as e:
        messages.append(str(e))
    # 2. A feature missing on rank 0 only.
    kjt = make_batch(3, rank)
    if rank == 0:
        kjt = kjt.select(["f_a", "f_b", "f_c", "f_d"])
    try:
        sebc(kjt)
    except DistributedInputError as e:
        messages.append(str(e))
    # 3. After the errors, the group still works: a good batch gives the right output.
    kjt = make_batch(2, 7 + rank)
    torch.testing.assert_close(sebc(kjt).values(), ebc(kjt).values(), rtol=1e-5, atol=1e-6)
    return messages


def test_bad_input_raises_on_every_rank_without_hanging():
    results = run_distributed(bad_inputs, 2, timeout=60)
    for messages in results:
        assert len(messages) == 2
        assert "rank 1" in messages[0] and "'f_a'" in messages[0] and "1000" in messages[0]
        assert "(table 't_sum')" in messages[0]
        assert "rank 0" in messages[1] and "f_e" in messages[1] and "missing" in messages[1]
