import json

import pytest

from recis.distributed import (
    COLUMN_WISE,
    DATA_PARALLEL,
    ROW_WISE,
    SHARDING_TYPES,
    TABLE_ROW_WISE,
    TABLE_WISE,
    ShardingError,
    ShardingPlan,
    plan_sharding,
)
from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig


def _ebc(n_tables=4, rows=100, dim=16):
    return EmbeddingBagCollection(
        [EmbeddingBagConfig(f"t{i}", rows, dim, [f"f{i}"]) for i in range(n_tables)],
        device="meta",
    )


def test_default_plan_is_balanced_table_wise():
    plan = plan_sharding(_ebc(4), world_size=2)
    assert all(t.sharding_type == TABLE_WISE for t in plan.tables.values())
    per_rank = [sum(t.shard_on(r) is not None for t in plan.tables.values()) for r in range(2)]
    assert per_rank == [2, 2]
    assert plan.rank_memory()[0] == plan.rank_memory()[1]


def test_constraints_are_honoured_and_shards_tile_tables():
    ebc = EmbeddingBagCollection(
        [
            EmbeddingBagConfig("a", 10, 16, ["fa"]),
            EmbeddingBagConfig("b", 7, 12, ["fb"]),
            EmbeddingBagConfig("c", 9, 8, ["fc"]),
            EmbeddingBagConfig("d", 5, 4, ["fd"]),
            EmbeddingBagConfig("e", 3, 4, ["fe"]),
        ],
        device="meta",
    )
    cons = {"a": ROW_WISE, "b": COLUMN_WISE, "c": TABLE_ROW_WISE, "d": DATA_PARALLEL}
    plan = plan_sharding(ebc, world_size=4, constraints=cons, local_world_size=2)
    assert {n: t.sharding_type for n, t in plan.tables.items()} == {**cons, "e": TABLE_WISE}
    a, b, c, d = (plan.tables[n] for n in "abcd")
    assert [s.rows for s in a.shards] == [3, 3, 2, 2] and len({s.rank for s in a.shards}) == 4
    assert all(s.cols % 4 == 0 for s in b.shards) and sum(s.cols for s in b.shards) == 12
    assert len({s.rank for s in b.shards}) == len(b.shards) == 3
    node = {s.rank // 2 for s in c.shards}
    assert len(node) == 1 and sum(s.rows for s in c.shards) == 9  # one node's two ranks
    assert sorted(d.ranks()) == [0, 1, 2, 3]
    plan.validate()


def test_json_round_trip_and_readable_table():
    plan = plan_sharding(
        _ebc(3, dim=8), world_size=3, constraints={"t0": ROW_WISE, "t1": COLUMN_WISE}
    )
    again = ShardingPlan.from_json(plan.to_json())
    assert again == plan
    json.loads(plan.to_json())
    text = str(plan)
    for name in ("t0", "t1", "t2", "row_wise", "column_wise", "memory"):
        assert name in text
    assert text.count("\n") >= 3 + 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"constraints": {"t0": COLUMN_WISE}, "dim": 4}, "column_wise needs embedding_dim"),
        ({"constraints": {"t0": COLUMN_WISE}, "dim": 10}, "multiple of 4"),
        ({"constraints": {"nope": ROW_WISE}}, "does not have"),
        ({"constraints": {"t0": "diagonal"}}, "unknown sharding type"),
        ({"memory_per_rank": 1000}, "memory_per_rank"),
        (
            {"constraints": {"t0": TABLE_ROW_WISE}, "world_size": 3, "local_world_size": 2},
            "multiple",
        ),
    ],
)
def test_impossible_plans_raise(kwargs, match):
    dim = kwargs.pop("dim", 16)
    kwargs.setdefault("world_size", 2)
    with pytest.raises(ShardingError, match=match):
        plan_sharding(_ebc(2, dim=dim), **kwargs)


def test_too_big_table_goes_row_wise_and_bad_json_plan_is_rejected():
    # One table is 100x16 floats + row-wise state = 6800 bytes: does not fit whole in 4000.
    plan = plan_sharding(_ebc(1), world_size=2, memory_per_rank=4000)
    assert plan.tables["t0"].sharding_type == ROW_WISE
    broken = json.loads(plan.to_json())
    broken["tables"][0]["shards"][0]["rows"] = 10
    with pytest.raises(ShardingError, match="do not tile"):
        ShardingPlan.from_json(json.dumps(broken))
    assert set(SHARDING_TYPES) == {TABLE_WISE, ROW_WISE, COLUMN_WISE, TABLE_ROW_WISE, DATA_PARALLEL}


def test_a_plan_says_how_another_differs_from_it():
    plan = plan_sharding(_ebc(), world_size=2)
    assert plan.difference(ShardingPlan.from_json(plan.to_json())) is None
    assert plan.difference(plan_sharding(_ebc(), world_size=3)) == "world_size 3 instead of 2"
    assert plan.difference(plan_sharding(_ebc(rows=99), world_size=2)) == (
        "table 't0' is 99x16 instead of 100x16"
    )
    assert plan.difference(plan_sharding(_ebc(n_tables=5), world_size=2)) == (
        "tables [] missing and ['t4'] added"
    )
    other = plan_sharding(_ebc(), world_size=2, constraints={"t1": ROW_WISE})
    assert plan.difference(other).startswith("table 't1' is sharded otherwise: ")
