"""Every op on random, often malformed input: it raises a RuntimeError or ValueError that
names the op, or returns what its reference returns (on the CPU, from the same inputs).
Never a crash, never a silently wrong result. (Each case is small; the seeds make every
run the same.)"""

import random
from functools import partial

import pytest
import torch

from recis import ops
from recis.ops import RoutingPlan, reference

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _to(device, x):
    """``x`` with every tensor in it (lists and tuples too) on ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(device, v) for v in x)
    return x


def _assert_named_error_or_equal(call, call_reference, compare, op):
    try:
        got = call()
    except (RuntimeError, ValueError) as e:
        assert str(e).startswith(op), e
        return
    compare(got, call_reference())


def _random_plan(rng):
    """A plan with a few keys, tables, blocks, copies and slots, each entry sometimes
    out of range or out of order."""
    keys, tables, slots = rng.randint(0, 3), rng.randint(0, 3), rng.randint(0, 4)
    blocks, copies = rng.randint(1, 3), rng.randint(1, 2)
    bounds = [sorted(rng.randint(-2, 10) for _ in range(blocks + 1)) for _ in range(tables)]
    if tables and rng.random() < 0.1:
        bounds[0] = [rng.randint(-2, 10) for _ in range(blocks + 1)]
    dest = sorted(rng.randint(0, 2) for _ in range(slots))
    if slots and rng.random() < 0.1:
        dest[0] = rng.randint(-1, 3)

    def i64(values, *shape):
        return torch.tensor(values, dtype=torch.int64).reshape(shape)

    return RoutingPlan(
        i64([rng.randint(-2, tables) for _ in range(keys)], keys),
        i64([rng.randint(-1, 2) for _ in range(keys)], keys),
        i64([b for t in bounds for b in t], tables, blocks + 1),
        i64(
            [rng.randint(-2, slots) for _ in range(tables * blocks * copies)],
            tables,
            blocks,
            copies,
        ),
        torch.tensor([rng.random() < 0.5 for _ in range(tables)], dtype=torch.bool),
        i64([rng.randint(-1, 3) for _ in range(slots)], slots),
        i64(dest, slots),
    )


def _same_routes(got, want):
    got = got._replace(**{k: _to("cpu", v) for k, v in got._asdict().items()})
    assert torch.equal(got.send_ints, want.send_ints)
    assert list(got.slot_ids) == list(want.slot_ids)
    for a, b in ((got.send_weights, want.send_weights), (got.positions, want.positions)):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_route_on_random_plans_and_batches(device, seed):
    rng = random.Random(seed)
    for _ in range(500):
        plan = _random_plan(rng)
        batch = rng.randint(0, 3)
        bags = plan.key_table.numel() * batch
        lengths = [rng.randint(0, 3) for _ in range(bags)]
        if rng.random() < 0.1:
            lengths = [rng.randint(-1, 3) for _ in range(rng.randint(0, 5))]
        n = max(0, sum(lengths)) if rng.random() < 0.9 else rng.randint(0, 6)
        args = (
            torch.tensor([rng.randint(-2, 11) for _ in range(n)]),
            torch.tensor(lengths, dtype=torch.int64),
            torch.rand(n) if rng.random() < 0.5 else None,
            batch,
            plan,
        )
        positions = rng.random() < 0.5
        batch_on_device = _to(device, args[:3])  # the plan stays on the host
        _assert_named_error_or_equal(
            partial(ops.route, *batch_on_device, *args[3:], with_positions=positions),
            partial(reference.route, *args, with_positions=positions),
            _same_routes,
            "recis.route",
        )


def _some_tensor(rng, shape, dtype):
    """Random values of ``shape`` and ``dtype``; now and then a dimension is off by one,
    the last one missing, or the tensor a strided view."""
    if rng.random() < 0.03:
        shape = tuple(max(0, s + rng.randint(-1, 1)) for s in shape)
    if rng.random() < 0.03 and shape:
        shape = shape[:-1]
    if dtype.is_floating_point:
        t = torch.randn(shape).to(dtype)
    else:
        t = torch.randint(-1, 6, shape).to(dtype)
    if rng.random() < 0.03 and t.dim() == 2 and t.shape[1] > 1:
        t = t[:, ::2]
    return t


def _some_offsets(rng, nnz, bags, dtype):
    cuts = sorted(rng.randint(0, nnz) for _ in range(bags - 1)) if bags else []
    offsets = [0, *cuts, nnz] if bags else [0]
    roll = rng.random()
    if roll < 0.05:
        offsets = [rng.randint(-2, nnz + 2) for _ in offsets]
    elif roll < 0.08:
        offsets[-1] = nnz + rng.randint(1, 3)
    return torch.tensor(offsets).to(dtype if rng.random() > 0.05 else torch.int64)


def _close(got, want):
    # Sums in the table's dtype against the reference's float64 sums.
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-4, torch.float64: 1e-9}
    assert got.shape == want.shape
    t = tol[got.dtype]
    torch.testing.assert_close(got.cpu().double(), want.double(), rtol=t, atol=t, equal_nan=True)


STATES = {
    "sparse_sgd_update": 0,
    "sparse_adagrad_update": 1,
    "sparse_rowwise_adagrad_update": 1,
    "sparse_adam_update": 2,
}


def _update(module, op, weights, states, grad_lists):
    """``module``'s (ops or reference) update ``op`` in place; returns what it changes."""
    states = [list(st[: STATES[op]]) for st in states]
    per_state = [[st[k] for st in states] for k in range(STATES[op])]
    hyper = {
        "sparse_sgd_update": (0.1,),
        "sparse_adagrad_update": (0.1, 1e-8),
        "sparse_rowwise_adagrad_update": (0.1, 1e-8),
        "sparse_adam_update": (0.1, 0.9, 0.99, 1e-8, 0.01, [3] * len(weights), False),
    }[op]
    getattr(module, op)(weights, *per_state, *grad_lists, *hyper)
    return [*weights, *(s for st in states for s in st)]


def _random_tables(rng, op, dtype, index, batch):
    """Per-table lists: weights, ids, offsets, per-sample weights, gradients, mean,
    features, two state tensors."""
    lists = [[] for _ in range(8)]
    for _ in range(1 if op == "pooled_lookup" else rng.randint(1, 3)):
        rows, dim, nf = rng.randint(0, 6), rng.choice([0, 1, 3, 8, 16, 17]), rng.randint(1, 2)
        bags = nf * batch if op == "pooled_lookup_tables" else rng.randint(0, 5)
        nnz = rng.randint(0, 8)
        top = rows if rng.random() < 0.05 else max(rows - 1, 0)  # now and then one too far
        state_shape = (rows,) if op == "sparse_rowwise_adagrad_update" else (rows, dim)
        table = (
            _some_tensor(rng, (rows, dim), dtype),
            torch.tensor([rng.randint(0, top) for _ in range(nnz)]).to(index),
            _some_offsets(rng, nnz, bags, index),
            _some_tensor(rng, (nnz,), torch.float32) if rng.random() < 0.3 else None,
            _some_tensor(rng, (bags, dim), dtype),
            rng.random() < 0.5,
            nf,
            [_some_tensor(rng, state_shape, dtype).abs() for _ in range(2)],
        )
        for column, value in zip(lists, table, strict=True):
            column.append(value)
    return lists


def _close_all(got, want):
    for a, b in zip(got, want, strict=True):
        _close(a, b)


def _case(rng, op, device):
    """One random call of ``op`` on ``device``: (run it, run its reference, compare)."""
    dtype = rng.choice([torch.float32, torch.float32, torch.float64, torch.float16])
    index = rng.choice([torch.int64, torch.int64, torch.int32, torch.int16, torch.float32])
    batch = rng.randint(0, 4)
    weights, ids, offsets, psw, grads, mean, features, states = _random_tables(
        rng, op, dtype, index, batch
    )
    if op == "pooled_lookup":
        args = (weights[0], ids[0], offsets[0], psw[0], int(mean[0]))
        return (
            lambda: ops.pooled_lookup(*_to(device, args)),
            lambda: reference.pooled_lookup(*args),
            _close,
        )
    if op == "pooled_lookup_tables":
        width = sum(f * w.shape[-1] for f, w in zip(features, weights, strict=True))
        out = _some_tensor(rng, (batch, width), dtype)
        reference_out = out.clone()  # the op writes into out (on the CPU, out itself)
        args = (weights, ids, offsets, psw, mean, features)
        # A table of another dtype than out's pools in its own: compared at float32.
        same_dtype = all(w.dtype == out.dtype for w in weights)
        return (
            lambda: ops.pooled_lookup_tables(*_to(device, args), out.to(device)),
            lambda: reference.pooled_lookup_tables(*args, reference_out),
            _close if same_dtype else lambda a, b: _close(a.float(), b.float()),
        )
    grad_lists = (ids, offsets, psw, grads, mean)
    mine = _to(device, ([w.clone() for w in weights], [[s.clone() for s in st] for st in states]))
    return (
        lambda: _update(ops, op, *mine, _to(device, grad_lists)),
        lambda: _update(reference, op, weights, states, grad_lists),
        _close_all,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["pooled_lookup", "pooled_lookup_tables", *STATES])
@pytest.mark.parametrize("seed", range(2))
def test_lookups_and_updates_on_random_tables_and_bags(device, op, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    for _ in range(300):
        run, run_reference, compare = _case(rng, op, device)
        _assert_named_error_or_equal(run, run_reference, compare, f"recis.{op}")
