import random

import pytest
import torch

from recis import ops
from recis.ops import TableRoute, reference, routing_plan


def _random_case(rng: random.Random, batch: int, weighted: bool, dtype=torch.int64):
    """A batch and a plan mixing row-split tables (uneven blocks, some empty), whole
    and column-split ones (copies), keys no table reads, slots on random dests."""
    tables, slot_table = [], []
    for t in range(rng.randint(1, 4)):
        rows, features = rng.randint(1, 30), rng.randint(1, 3)
        if rng.random() < 0.5:
            cuts = sorted(rng.randint(0, rows) for _ in range(rng.randint(0, 4)))
            bounds, cells = [0, *cuts, rows], [[None] for _ in range(len(cuts) + 1)]
        else:
            bounds, cells = [0, rows], [[None] * rng.randint(1, 3)]
        tables.append((bounds, cells, features, rng.random() < 0.5))
        slot_table += [(t, features)] * sum(len(c) for c in cells)
    # Slots numbered in dest order; each table's cells take its slots in turn.
    dests = sorted(rng.randint(0, 3) for _ in slot_table)
    order = list(range(len(slot_table)))
    rng.shuffle(order)
    routes, next_slot = [], iter(order)
    for bounds, cells, _, divide in tables:
        routes.append(TableRoute(bounds, [[next(next_slot) for _ in c] for c in cells], divide))
    slot_features = [0] * len(slot_table)
    for table_slots, (_, _, features, _) in zip((r.slots for r in routes), tables, strict=True):
        for s in (s for c in table_slots for s in c):
            slot_features[s] = features
    keys = [(t, f) for t, (_, _, n, _) in enumerate(tables) for f in range(n)]
    keys += [None] * rng.randint(0, 2)
    rng.shuffle(keys)
    lengths = [rng.randint(0, 4) for _ in range(len(keys) * batch)]
    if lengths:
        lengths[0] = 0  # an empty bag
    values = []
    for bag, n in enumerate(lengths):
        key = keys[bag // batch]
        rows = tables[key[0]][0][-1] if key else 0
        # Keys no table reads may hold anything.
        ids = [rng.randrange(rows) if key else rng.randint(-9, 99) for _ in range(n)]
        values += ids[:1] + ids[:-1] if n > 1 else ids  # a duplicate id in longer bags
    values_t = torch.tensor(values, dtype=dtype)
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    weights = torch.rand(len(values), generator=generator) if weighted else None
    plan = routing_plan(keys, routes, slot_features, dests)
    return values_t, torch.tensor(lengths, dtype=dtype), weights, plan


def _assert_routes_equal(got, want) -> None:
    assert torch.equal(got.send_ints.cpu(), want.send_ints)
    assert got.slot_ids == want.slot_ids
    for a, b in ((got.send_weights, want.send_weights), (got.positions, want.positions)):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("batch", [0, 1, 5])
def test_route_matches_reference(weighted, dtype, batch):
    rng = random.Random(f"{weighted}{dtype}{batch}")
    for _ in range(20):
        values, lengths, weights, plan = _random_case(rng, batch, weighted, dtype)
        got = ops.route(values, lengths, weights, batch, plan, with_positions=True)
        want = reference.route(values, lengths, weights, batch, plan, with_positions=True)
        _assert_routes_equal(got, want)
        assert got.send_ints.dtype == torch.int64


def test_positions_undo_the_routing():
    # One table in blocks [0, 4), [4, 8) on dests 0 and 1; two samples.
    plan = routing_plan([(0, 0)], [TableRoute([0, 4, 8], [[0], [1]])], [1, 1], [0, 1])
    values = torch.tensor([5, 1, 7, 2])
    got = ops.route(values, torch.tensor([3, 1]), None, 2, plan, with_positions=True)
    # dest 0: lengths [1, 1], ids [1, 2]; dest 1: lengths [2, 0], ids [5-4, 7-4].
    assert got.send_ints.tolist() == [1, 1, 1, 2, 2, 0, 1, 3]
    assert got.slot_ids == [2, 2]
    assert got.positions.tolist() == [1, 3, 0, 2]
    starts = torch.tensor([0, 0, 4, 4])
    sent = torch.tensor([1, 2, 1, 3])
    assert torch.equal(values[got.positions], sent + starts)


def test_column_chunks_each_get_every_id_and_weights_divide_by_the_bag_length():
    # Table 0 whole in two column chunks (slots 0 and 2); table 1 row-split with mean
    # pooling (divide): its weights become 1 / bag length.
    plan = routing_plan(
        [(1, 0), (0, 0)],
        [TableRoute([0, 10], [[0, 2]]), TableRoute([0, 3, 6], [[1], [3]], divide=True)],
        [1, 1, 1, 1],
        [0, 0, 1, 1],
    )
    # Key 0 (table 1): bags [1, 4], [5]; key 1 (table 0): bags [7], [].
    values, lengths = torch.tensor([1, 4, 5, 7]), torch.tensor([2, 1, 1, 0])
    got = ops.route(values, lengths, None, 2, plan)
    # dest 0: slot 0 (table 0) lengths [1, 0], slot 1 (table 1 block 0) [1, 0]; ids 7, 1.
    # dest 1: slot 2 lengths [1, 0], slot 3 (block 1) [1, 1]; ids 7, 4-3, 5-3.
    assert got.send_ints.tolist() == [1, 0, 1, 0, 7, 1, 1, 0, 1, 1, 7, 1, 2]
    assert got.send_weights.tolist() == [1.0, 0.5, 1.0, 0.5, 1.0]
    assert got.slot_ids == [1, 1, 1, 2]


def test_ids_on_a_boundary_go_to_the_last_block_starting_there():
    # Blocks 1-3 are empty (they start where block 4 does) and have no slot: id 4 is
    # block 4's.
    bounds = [0, 4, 4, 4, 4, 6, 8]
    plan = routing_plan(
        [(0, 0)], [TableRoute(bounds, [[0], [], [], [], [1], [2]])], [1, 1, 1], [0, 1, 2]
    )
    got = ops.route(torch.tensor([0, 3, 4, 5, 6, 7]), torch.tensor([6]), None, 1, plan)
    assert got.send_ints.tolist() == [2, 0, 3, 2, 0, 1, 2, 0, 1]
    assert got.slot_ids == [2, 2, 2]


def test_a_table_whose_rows_start_above_zero_sends_ids_local_to_its_first_row():
    # Rows [3, 8) in one block, sent whole to two column chunks (slots 0 and 1).
    plan = routing_plan([(0, 0)], [TableRoute([3, 8], [[0, 1]])], [1, 1], [0, 1])
    got = ops.route(torch.tensor([3, 7, 5]), torch.tensor([2, 1]), None, 2, plan, True)
    assert got.send_ints.tolist() == [2, 1, 0, 4, 2, 2, 1, 0, 4, 2]
    assert got.positions.tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match=r"value 2 at position 0 \(key 0\) is outside"):
        ops.route(torch.tensor([2]), torch.tensor([1, 0]), None, 2, plan)


def _one_table(bounds=(0, 4, 8), keys=((0, 0),), slots=((0,), (1,))):
    return routing_plan(
        list(keys), [TableRoute(list(bounds), [list(s) for s in slots])], [1, 1], [0, 1]
    )


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize(
    "values, lengths, plan, error, message",
    [
        (
            [1, 9],
            [2],
            _one_table(),
            ValueError,
            r"value 9 at position 1 \(key 0\) is outside table 0's rows \[0, 8\)",
        ),
        ([1, -1], [2], _one_table(), ValueError, r"value -1 at position 1 \(key 0\)"),
        (
            [1, 9],
            [2],
            _one_table(bounds=(0, 8), slots=((0, 1),)),
            ValueError,
            r"value 9 at position 1 \(key 0\) is outside table 0's rows \[0, 8\)",
        ),
        ([1, 2], [3], _one_table(), RuntimeError, "lengths sum to 3 but there are 2 values"),
        (
            [1, 2],
            [3, -1],
            _one_table(keys=((0, 0), None)),
            RuntimeError,
            r"lengths\[1\] is negative",
        ),
        ([1, 2], [1, 1], _one_table(), RuntimeError, "lengths has 2 bags but 1 keys x batch 1"),
        ([1], [1], _one_table(bounds=(0, 5, 4)), RuntimeError, "bounds must be non-decreasing"),
        ([1], [1], _one_table(slots=((0,), (7,))), RuntimeError, "names slot 7 of 2"),
        (
            [1],
            [1],
            _one_table(bounds=(0, 4, 4, 8), slots=((0,), (7,), (1,))),
            RuntimeError,
            "table 0 block 1 names slot 7 of 2",
        ),
        ([1], [1], _one_table(slots=((0,), (-1,))), RuntimeError, "block 1 has no slot"),
        ([1], [1], _one_table(slots=((0,), (0,))), RuntimeError, "slot 0 is named twice"),
        (
            [1],
            [1],
            _one_table(bounds=(0, 8), slots=((0, -1, 1),)),
            RuntimeError,
            "names slot 1 after a -1",
        ),
        ([1], [1], _one_table(keys=((3, 0),)), RuntimeError, "key 0 names table 3 of 1"),
        ([1], [1], _one_table(keys=((0, 1),)), RuntimeError, "key 0 is feature 1 of table 0"),
        (
            [1, 2],
            [1, 1],
            _one_table(keys=((0, 0), (0, 0))),
            RuntimeError,
            "two keys are feature 0 of table 0",
        ),
    ],
    ids=[
        "id_above",
        "id_below",
        "id_above_whole_table",
        "lengths_sum",
        "negative_length",
        "bags",
        "bounds",
        "slot",
        "slot_of_empty_block",
        "no_slot",
        "slot_twice",
        "slot_after_padding",
        "table",
        "feature",
        "two_keys",
    ],
)
def test_the_op_names_bad_input_on_every_device(device, values, lengths, plan, error, message):
    # The kernels would read or write outside their buffers on any of these. A bad id
    # is bad data (ValueError, as everywhere in recis); the rest are bad arguments.
    with pytest.raises(error, match=message):
        ops.route(
            torch.tensor(values, device=device), torch.tensor(lengths, device=device), None, 1, plan
        )


def test_the_plan_must_be_on_the_host():
    plan = _one_table()
    bad = plan._replace(key_table=plan.key_table.int())
    with pytest.raises(RuntimeError, match="contiguous int64 host tensors"):
        ops.route(torch.tensor([1]), torch.tensor([1]), None, 1, bad)


@pytest.mark.cuda
def test_cuda_route_with_values_or_lengths_on_the_host_raises():
    plan = _one_table()
    values, lengths = torch.tensor([1, 5]), torch.tensor([2])
    with pytest.raises(RuntimeError, match="device"):
        ops.route(values, lengths.cuda(), None, 1, plan)
    with pytest.raises(RuntimeError, match="device"):
        ops.route(values.cuda(), lengths, None, 1, plan)


@pytest.mark.cuda
@pytest.mark.parametrize("weighted", [False, True])
def test_route_cuda_matches_cpu(weighted):
    rng = random.Random(7)
    for batch in (1, 64):
        values, lengths, weights, plan = _random_case(rng, batch, weighted)
        cpu = ops.route(values, lengths, weights, batch, plan, with_positions=True)
        gpu = ops.route(
            values.cuda(),
            lengths.cuda(),
            None if weights is None else weights.cuda(),
            batch,
            plan,
            with_positions=True,
        )
        _assert_routes_equal(gpu, cpu)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_long_bags_keep_their_order_in_every_block(device):
    # Bags of thousands of ids (a user's history), spread over 16 blocks on 4 dests.
    lengths = torch.tensor([5000, 0, 1, 3000, 7])
    values = torch.randint(0, 10_000, (int(lengths.sum()),))
    weights = torch.rand(values.numel())
    bounds = list(range(0, 10_001, 625))
    plan = routing_plan(
        [(0, 0)],
        [TableRoute(bounds, [[k] for k in range(16)])],
        [1] * 16,
        [k // 4 for k in range(16)],
    )
    got = ops.route(values.to(device), lengths.to(device), weights.to(device), 5, plan, True)
    want = reference.route(values, lengths, weights, 5, plan, True)
    _assert_routes_equal(got, want)


def test_bags_split_between_threads_mid_key_match_the_reference():
    # 3 keys x 700 samples: the kernels' threads take runs of bags that start and end
    # inside a key's bags (a whole table's runs are copied as blocks).
    # Table 1 (key 0) in three row blocks, mean pooled; table 0 (keys 1, 2) whole in two
    # column chunks.
    plan = routing_plan(
        [(1, 0), (0, 0), (0, 1)],
        [TableRoute([0, 50], [[1, 3]]), TableRoute([0, 20, 40, 50], [[0], [2], [4]], True)],
        [1, 2, 1, 2, 1],
        [0, 0, 1, 1, 2],
    )
    generator = torch.Generator().manual_seed(3)
    lengths = torch.randint(0, 4, (3 * 700,), generator=generator)
    values = torch.randint(0, 50, (int(lengths.sum()),), generator=generator)
    weights = torch.rand(values.numel(), generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = ops.route(values, lengths, weights, 700, plan, with_positions=True)
    finally:
        torch.set_num_threads(threads)
    _assert_routes_equal(got, reference.route(values, lengths, weights, 700, plan, True))
