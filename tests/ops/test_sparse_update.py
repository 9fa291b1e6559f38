"""The fused sparse-update kernels and unique_row_grads against their references."""

import pytest
import torch

from recis import ops
from recis.ops import reference
from tests.ops.helpers import l2_prefetch_threshold, torch_threads


def random_grad(
    num_bags, rows, max_len, dim, dtype=torch.float64, index=torch.long, weighted=False
):
    lengths = torch.randint(0, max_len + 1, (num_bags,))
    lengths[torch.rand(num_bags) < 0.2] = 0  # empty bags
    offsets = torch.zeros(num_bags + 1, dtype=index)
    offsets[1:] = torch.cumsum(lengths, 0)
    ids = torch.randint(0, rows, (int(lengths.sum()),), dtype=index)
    psw = torch.rand(ids.numel(), dtype=dtype) if weighted else None
    grad_out = torch.randn(num_bags, dim, dtype=dtype)
    return ids, offsets, psw, grad_out


def _state_like(weight, kind):
    if kind == "row":
        return torch.rand(weight.shape[0], dtype=weight.dtype)
    return torch.rand_like(weight)


# name -> (extra state kinds, hyper-parameters after `mean`)
UPDATES = {
    "sparse_sgd_update": ([], dict(lr=0.1, weight_decay=0.01)),
    # Without decay the CPU kernel applies each occurrence on its own (no dedup).
    "sgd_without_decay": ([], dict(lr=0.1, weight_decay=0.0)),
    "sparse_adagrad_update": (["elem"], dict(lr=0.1, eps=1e-6, weight_decay=0.01)),
    "sparse_rowwise_adagrad_update": (["row"], dict(lr=0.1, eps=1e-6, weight_decay=0.01)),
    "sparse_adam_update": (
        ["elem", "elem"],
        dict(
            lr=0.01,
            beta1=0.9,
            beta2=0.99,
            eps=1e-6,
            weight_decay=0.01,
            steps=[3],
            decoupled_weight_decay=False,
        ),
    ),
    "adamw": (
        ["elem", "elem"],
        dict(
            lr=0.01,
            beta1=0.8,
            beta2=0.95,
            eps=1e-6,
            weight_decay=0.1,
            steps=[1],
            decoupled_weight_decay=True,
        ),
    ),
}


def _op_name(name):
    return {"adamw": "sparse_adam_update", "sgd_without_decay": "sparse_sgd_update"}.get(name, name)


def _on_one_table(fn, weight, states, grad, hyper):
    """fn (an op or its reference) on one table: each per-table argument a 1-entry list."""
    ids, offsets, psw, grad_out, mean = grad
    fn([weight], *[[s] for s in states], [ids], [offsets], [psw], [grad_out], [mean], **hyper)


def _run_both(name, weight, grad, states=None):
    kinds, hyper = UPDATES[name]
    if states is None:
        states = [_state_like(weight, k) for k in kinds]
    ours_w, ours_s = weight.clone(), [s.clone() for s in states]
    ref_w, ref_s = weight.clone(), [s.clone() for s in states]
    _on_one_table(getattr(ops, _op_name(name)), ours_w, ours_s, grad, hyper)
    _on_one_table(getattr(reference, _op_name(name)), ref_w, ref_s, grad, hyper)
    return (ours_w, ours_s), (ref_w, ref_s)


def _assert_same(ours, ref, weight, ids, **tol):
    (ours_w, ours_s), (ref_w, ref_s) = ours, ref
    torch.testing.assert_close(ours_w, ref_w, **tol)
    for a, b in zip(ours_s, ref_s, strict=True):
        torch.testing.assert_close(a, b, **tol)
    untouched = torch.ones(weight.shape[0], dtype=torch.bool)
    untouched[ids.long()] = False
    assert torch.equal(ours_w[untouched], weight[untouched])


@pytest.mark.parametrize("name", list(UPDATES))
# 16, 32, 64 and 128 run the kernels compiled for those widths; the others the generic
# ones; a table of width 0 changes nothing, its state included.
@pytest.mark.parametrize("dim", [0, 1, 3, 16, 32, 64, 127, 128, 129])
@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_update_matches_reference(name, dim, mean, weighted):
    weight = torch.randn(40, dim, dtype=torch.float64)
    ids, offsets, psw, grad_out = random_grad(25, 40, 6, dim, weighted=weighted)
    ours, ref = _run_both(name, weight, (ids, offsets, psw, grad_out, mean))
    _assert_same(ours, ref, weight, ids)


@pytest.mark.parametrize("name", list(UPDATES))
@pytest.mark.parametrize("dim", [3, 64, 129])
def test_rows_prefetched_into_l2_or_not_update_alike(name, dim):
    # Whether an update call also prefetches rows into L2 depends on its tables' bytes
    # against the cache (cpu/cache_size.h); the tables of the other tests are small, so
    # this runs both ways on each. Prefetches change no value.
    weight = torch.randn(300, dim, dtype=torch.float64)
    grad = (*random_grad(120, 300, 9, dim), False)
    states = [_state_like(weight, k) for k in UPDATES[name][0]]
    results = []
    for threshold in (0, 1 << 62):
        with l2_prefetch_threshold(threshold):
            results.append(_run_both(name, weight, grad, states))
    (always, ref), (never, _) = results
    _assert_same(always, ref, weight, grad[0])
    assert torch.equal(always[0], never[0])
    assert all(torch.equal(a, b) for a, b in zip(always[1], never[1], strict=True))


@pytest.mark.parametrize("name", list(UPDATES))
def test_update_float32_and_int32_ids(name):
    weight = torch.randn(60, 16)
    ids, offsets, psw, grad_out = random_grad(
        30, 60, 8, 16, dtype=torch.float32, index=torch.int32, weighted=True
    )
    ours, ref = _run_both(name, weight, (ids, offsets, psw, grad_out, True))
    _assert_same(ours, ref, weight, ids, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(UPDATES))
def test_all_duplicate_ids_and_a_single_row_table(name):
    weight = torch.randn(1, 5, dtype=torch.float64)
    ids = torch.zeros(9, dtype=torch.long)
    offsets = torch.tensor([0, 4, 4, 9])
    grad_out = torch.randn(3, 5, dtype=torch.float64)
    ours, ref = _run_both(name, weight, (ids, offsets, None, grad_out, False))
    _assert_same(ours, ref, weight, ids)


@pytest.mark.parametrize("name", list(UPDATES))
def test_no_ids_changes_nothing(name):
    weight = torch.randn(7, 4, dtype=torch.float64)
    ids = torch.zeros(0, dtype=torch.long)
    offsets = torch.zeros(4, dtype=torch.long)  # three empty bags
    ours, _ = _run_both(name, weight, (ids, offsets, None, torch.randn(3, 4).double(), True))
    assert torch.equal(ours[0], weight)


@pytest.mark.parametrize("name", list(UPDATES))
@pytest.mark.parametrize("layout", ["column_block", "expanded", "transposed"])
@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "unweighted"])
# With many ids per bag each gradient row is read many times, and a strided one is
# packed before the update reads it.
@pytest.mark.parametrize("max_len", [6, 40], ids=["few_ids_per_bag", "many_ids_per_bag"])
def test_grad_out_is_read_with_its_strides(name, layout, weighted, max_len):
    weight = torch.randn(40, 6, dtype=torch.float64)
    ids, offsets, psw, _ = random_grad(25, 40, max_len, 6, weighted=weighted)
    if layout == "column_block":  # a table's block of a collection's output gradient
        grad_out = torch.randn(25, 15, dtype=torch.float64)[:, 5:11]
    elif layout == "expanded":  # the gradient of out.sum(): one row, stride 0
        grad_out = torch.randn(1, 6, dtype=torch.float64).expand(25, 6)
    else:
        grad_out = torch.randn(6, 25, dtype=torch.float64).t()
    ours, ref = _run_both(name, weight, (ids, offsets, psw, grad_out, True))
    _assert_same(ours, ref, weight, ids)


@pytest.mark.parametrize(
    "weight_decay, rows, dim",
    # SGD without decay applies each occurrence on its own when the rows a batch touches
    # fit in cache (one thread) or ids rarely repeat (rows split over threads), and
    # dedups like the others when many ids repeat over more rows than that, or over a
    # table of at most 2048 rows.
    [(0.0, 1000, 8), (0.0, 10_000, 64), (0.0, 200_000, 64), (0.0, 1000, 64), (0.01, 1000, 64)],
    ids=[
        "sgd_in_cache",
        "sgd_small_table",
        "sgd_by_occurrence_split",
        "sgd_hot_rows",
        "sgd_with_decay",
    ],
)
def test_updates_do_not_depend_on_the_thread_count(weight_decay, rows, dim):
    # Enough ids (> 3 x 32768) that the dedup sorts them in one part per thread, and
    # on a small table hot rows repeated across many bags.
    weight = torch.randn(rows, dim)
    ids, offsets, psw, grad_out = random_grad(30000, rows, 12, dim, torch.float32, weighted=True)
    assert ids.numel() > 3 * 32768
    if rows == 1000:
        ids = torch.where(torch.rand(ids.numel()) < 0.5, ids % 7, ids)
    results = []
    for n in (1, 2, 3):
        with torch_threads(n):
            w = weight.clone()
            ops.sparse_sgd_update(
                [w], [ids], [offsets], [psw], [grad_out], [True], 0.1, weight_decay
            )
            results.append(w)
    assert all(torch.equal(results[0], r) for r in results[1:])


def _check_sgd_without_decay(repeats, bags, dim, index, weighted):
    ids, offsets, psw, grad_out = random_grad(bags, 5000, 10, dim, index=index, weighted=weighted)
    rows = max(5000, ids.numel())
    weight = torch.randn(rows, dim, dtype=torch.float64)
    distinct = torch.randperm(rows)[: ids.numel()].to(index)
    ids = distinct if repeats == "distinct_ids" else ids % 7
    for mean in (False, True):
        ours, ref = _run_both("sgd_without_decay", weight, (ids, offsets, psw, grad_out, mean))
        _assert_same(ours, ref, weight, ids)


@pytest.mark.parametrize("repeats", ["distinct_ids", "repeated_ids"])
@pytest.mark.parametrize("dim", [1, 3, 16, 129])
@pytest.mark.parametrize("index", [torch.long, torch.int32], ids=["int64", "int32"])
@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "unweighted"])
def test_sgd_without_decay_matches_the_reference_whether_ids_repeat_or_not(
    repeats, dim, index, weighted
):
    # A batch whose rows fit in cache is applied one occurrence at a time, repeats or not.
    _check_sgd_without_decay(repeats, 400, dim, index, weighted)


@pytest.mark.parametrize("repeats", ["distinct_ids", "repeated_ids"])
def test_sgd_without_decay_beyond_the_cache_matches_the_reference(repeats):
    # ~24k ids of dim 129 touch more than 16 MiB of float64 rows: repeated ids are
    # deduplicated first, distinct ones applied by occurrence with rows split over threads.
    _check_sgd_without_decay(repeats, 6_000, 129, torch.long, weighted=True)


@pytest.mark.parametrize("rows", [2048, 2049, 5000])
@pytest.mark.parametrize("mean", [False, True])
def test_sgd_without_decay_on_a_small_table_hit_by_many_ids_matches_the_reference(rows, mean):
    # ~150k ids of dim 16 in float64 are more than 16 MiB of occurrences, but the table
    # is less: above 2048 rows they are applied by occurrence, up to it deduplicated.
    ids, offsets, psw, grad_out = random_grad(15_000, rows, 24, 16, weighted=True)
    assert ids.numel() * 16 * 8 > 16 * 2**20
    weight = torch.randn(rows, 16, dtype=torch.float64)
    ours, ref = _run_both("sgd_without_decay", weight, (ids, offsets, psw, grad_out, mean))
    _assert_same(ours, ref, weight, ids)


@pytest.mark.parametrize("weighted", [True, False], ids=["by_position", "by_bag"])
@pytest.mark.parametrize(
    "rows",
    # Up to 2^22 rows the ids sort in one or two digits (of up to 11 bits) of 32-bit
    # values, beyond in 64-bit keys.
    [1000, 3000, 1 << 22, (1 << 23) + 5],
    ids=["one_digit", "two_digits", "two_full_digits", "64_bit_keys"],
)
def test_dedup_split_over_threads_matches_reference(weighted, rows):
    # Runs of one hot id cross the boundaries of the parts sorted by different threads,
    # and so do empty bags. Unweighted, the dedup records bags instead of positions.
    ids, offsets, psw, grad_out = random_grad(30000, rows, 12, 4, weighted=weighted)
    ids = torch.where(torch.rand(ids.numel()) < 0.5, ids % 5, ids)
    ids[:100] = rows - 1
    assert ids.numel() > 3 * 32768
    want_ids, want = reference.unique_row_grads(ids, offsets, psw, grad_out, True, rows)
    for n in (1, 2, 3):
        with torch_threads(n):
            got_ids, got = ops.unique_row_grads(ids, offsets, psw, grad_out, True, rows)
        assert torch.equal(got_ids, want_ids)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("rows", [3000, (1 << 23) + 5], ids=["two_digits", "64_bit_keys"])
def test_dedup_split_over_threads_of_one_id_gives_one_row(rows):
    # One run spans every part: the parts after the first start no run of their own.
    ids, offsets, psw, grad_out = random_grad(30000, rows, 12, 4, weighted=False)
    ids.fill_(rows - 1)
    assert ids.numel() > 3 * 32768  # enough for one part per thread at 3 threads
    want_ids, want = reference.unique_row_grads(ids, offsets, psw, grad_out, False, rows)
    assert want_ids.tolist() == [rows - 1]
    for n in (1, 2, 3):
        with torch_threads(n):
            got_ids, got = ops.unique_row_grads(ids, offsets, psw, grad_out, False, rows)
        assert torch.equal(got_ids, want_ids)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("bad", [-3, 5000, 10**12])
def test_a_bad_id_deep_in_a_large_batch_changes_nothing(bad):
    # The dedup checks ids in its key pass, split over threads for a batch this size.
    weight = torch.randn(3000, 8)
    ids, offsets, psw, grad_out = random_grad(30000, 3000, 12, 8, torch.float32)
    where = int(ids.numel() * 0.9)
    ids[where] = bad
    before = weight.clone()
    with pytest.raises(RuntimeError, match=rf"id {bad} at position {where} is outside"):
        ops.sparse_rowwise_adagrad_update(
            [weight], [torch.zeros(3000)], [ids], [offsets], [psw], [grad_out], [False], 0.1, 1e-8
        )
    assert torch.equal(weight, before)


def test_large_ids_sort_across_several_radix_digits():
    # ids above 2^22 need two 11-bit digits beyond the position bits.
    rows = (1 << 23) + 5
    weight = torch.zeros(1, 2).expand(rows, 2)  # only read through unique_row_grads
    del weight
    ids = torch.tensor([rows - 1, 3, 1 << 22, 3, rows - 1, 0])
    offsets = torch.tensor([0, 2, 6])
    grad_out = torch.randn(2, 2, dtype=torch.float64)
    got = ops.unique_row_grads(ids, offsets, None, grad_out, False, rows)
    want = reference.unique_row_grads(ids, offsets, None, grad_out, False, rows)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize("dim", [1, 3, 127, 129])
@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_unique_row_grads_matches_reference(dim, mean, weighted):
    ids, offsets, psw, grad_out = random_grad(30, 50, 7, dim, weighted=weighted)
    got_ids, got = ops.unique_row_grads(ids, offsets, psw, grad_out, mean, 50)
    want_ids, want = reference.unique_row_grads(ids, offsets, psw, grad_out, mean, 50)
    assert got_ids.dtype == torch.long
    assert torch.equal(got_ids, want_ids)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("max_len", [7, 40], ids=["few_ids_per_bag", "many_ids_per_bag"])
def test_unique_row_grads_reads_a_column_block(max_len):
    ids, offsets, psw, _ = random_grad(30, 50, max_len, 4, weighted=True)
    grad_out = torch.randn(30, 10, dtype=torch.float64)[:, 3:7]
    got_ids, got = ops.unique_row_grads(ids, offsets, psw, grad_out, False, 50)
    want_ids, want = reference.unique_row_grads(ids, offsets, psw, grad_out, False, 50)
    assert torch.equal(got_ids, want_ids)
    torch.testing.assert_close(got, want)


def test_unique_row_grads_of_nothing():
    got_ids, got = ops.unique_row_grads(
        torch.zeros(0, dtype=torch.int32),
        torch.zeros(3, dtype=torch.int32),
        None,
        torch.randn(2, 6),
        False,
        10,
    )
    assert got_ids.shape == (0,) and got.shape == (0, 6)


def test_unique_row_grads_matches_autograd_of_embedding_bag():
    weight = torch.randn(30, 8, requires_grad=True)
    ids, offsets, psw, grad_out = random_grad(16, 30, 5, 8, dtype=torch.float32, weighted=True)
    out = torch.nn.functional.embedding_bag(
        ids, weight, offsets[:-1], mode="sum", per_sample_weights=psw, include_last_offset=False
    )
    out.backward(grad_out)
    got_ids, got = ops.unique_row_grads(ids, offsets, psw, grad_out, False, 30)
    torch.testing.assert_close(got, weight.grad[got_ids])
    rest = torch.ones(30, dtype=torch.bool)
    rest[got_ids] = False
    assert torch.equal(weight.grad[rest], torch.zeros_like(weight.grad[rest]))


def _sgd(weight, ids, offsets, psw=None, grad_out=None, lr=0.1, wd=0.0):
    grad_out = torch.ones(offsets.numel() - 1, weight.shape[1]) if grad_out is None else grad_out
    ops.sparse_sgd_update([weight], [ids], [offsets], [psw], [grad_out], [False], lr, wd)


def test_bad_inputs_raise_clear_errors_and_change_nothing():
    weight = torch.randn(5, 3)
    before = weight.clone()
    offsets = torch.tensor([0, 2])
    with pytest.raises(RuntimeError, match=r"id 5 at position 1 is outside \[0, 5\)"):
        _sgd(weight, torch.tensor([1, 5]), offsets)
    with pytest.raises(RuntimeError, match="outside"):
        _sgd(weight, torch.tensor([-1, 0]), offsets)
    assert torch.equal(weight, before)  # checked before anything is written
    with pytest.raises(RuntimeError, match="grad_out has 2 rows but offsets describe 1 bags"):
        _sgd(weight, torch.tensor([1, 2]), offsets, grad_out=torch.ones(2, 3))
    with pytest.raises(RuntimeError, match="grad_out has dim 4 but the table has dim 3"):
        _sgd(weight, torch.tensor([1, 2]), offsets, grad_out=torch.ones(1, 4))
    with pytest.raises(RuntimeError, match="grad_out dtype"):
        _sgd(weight, torch.tensor([1, 2]), offsets, grad_out=torch.ones(1, 3).double())
    with pytest.raises(RuntimeError, match=r"offsets must start at 0 and end at ids\.numel"):
        _sgd(weight, torch.tensor([1, 2]), torch.tensor([0, 3]))
    with pytest.raises(RuntimeError, match=r"offsets decrease at bag 1 \(5 > 2\)"):
        _sgd(weight, torch.tensor([1, 2]), torch.tensor([0, 5, 2]), grad_out=torch.ones(2, 3))
    with pytest.raises(RuntimeError, match="offsets must have the dtype of ids"):
        _sgd(weight, torch.tensor([1, 2]), offsets.int())
    with pytest.raises(RuntimeError, match="per_sample_weights must be 1-D with one weight per id"):
        _sgd(weight, torch.tensor([1, 2]), offsets, psw=torch.ones(3))
    for lr in (-1.0, float("inf"), float("nan")):
        with pytest.raises(RuntimeError, match="lr must be a finite number >= 0"):
            _sgd(weight, torch.tensor([1, 2]), offsets, lr=lr)
    with pytest.raises(RuntimeError, match="weight must be contiguous"):
        _sgd(torch.randn(3, 5).t(), torch.tensor([1, 2]), offsets, grad_out=torch.ones(1, 3))
    with pytest.raises(RuntimeError, match="weight must be float32 or float64"):
        _sgd(weight.half(), torch.tensor([1, 2]), offsets, grad_out=torch.ones(1, 3).half())
    grad = (torch.tensor([1]), torch.tensor([0, 1]), None, torch.ones(1, 3), False)
    _, adam = UPDATES["sparse_adam_update"]
    with pytest.raises(RuntimeError, match=r"state_sum must have shape \[5\]"):
        _on_one_table(
            ops.sparse_rowwise_adagrad_update, weight, [torch.zeros(5, 3)], grad,
            dict(lr=0.1, eps=1e-8),
        )  # fmt: skip
    with pytest.raises(RuntimeError, match="exp_avg_sq must have the shape of weight"):
        _on_one_table(
            ops.sparse_adam_update, weight, [torch.zeros(5, 3), torch.zeros(5)], grad, adam
        )
    for wrong, message in [
        (dict(beta1=1.0), r"betas must be in \[0, 1\)"),
        (dict(steps=[0]), "step must be >= 1"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            _on_one_table(
                ops.sparse_adam_update, weight, [torch.zeros(5, 3), torch.zeros(5, 3)], grad,
                {**adam, **wrong},
            )  # fmt: skip
    assert torch.equal(weight, before)


def test_many_rows_in_parallel_match_reference():
    # Enough unique rows that at::parallel_for splits them over threads.
    weight = torch.randn(5000, 32, dtype=torch.float64)
    ids, offsets, psw, grad_out = random_grad(800, 5000, 30, 32, weighted=True)
    ours, ref = _run_both(
        "sparse_rowwise_adagrad_update", weight, (ids, offsets, psw, grad_out, True)
    )
    _assert_same(ours, ref, weight, ids)


# --- a batch of tables in one call ---


def _batch(specs, seed=0):
    """(weights, grads): a table and its gradient per spec (rows, dim, dtype, index,
    weighted, mean, bags, max_len)."""
    torch.manual_seed(seed)
    weights, grads = [], []
    for rows, dim, dtype, index, weighted, mean, bags, max_len in specs:
        weights.append(torch.randn(rows, dim, dtype=dtype))
        ids, offsets, psw, grad_out = random_grad(bags, rows, max_len, dim, dtype, index, weighted)
        grads.append((ids, offsets, psw, grad_out, mean))
    return weights, grads


def _copies(weights, states):
    """Clones of every table's weight and states, to update in place."""
    return [w.clone() for w in weights], [[s.clone() for s in ss] for ss in states]


def _on_tables(fn, name, weights, states, grads):
    """fn (an op or its reference) on every table at once: states[t] are table t's."""
    kinds, hyper = UPDATES[name]
    hyper = dict(hyper)
    if "steps" in hyper:  # a step count per table
        hyper["steps"] = [hyper["steps"][0] + t for t in range(len(weights))]
    per_state = [[s[k] for s in states] for k in range(len(kinds))]
    fn(weights, *per_state, *[list(field) for field in zip(*grads, strict=True)], **hyper)


def _states_of(name, weights):
    kinds, _ = UPDATES[name]
    return [[_state_like(w, k) for k in kinds] for w in weights]


@pytest.mark.parametrize("name", list(UPDATES))
def test_a_batch_of_tables_matches_the_reference_table_by_table(name):
    # Widths, dtypes, index types, weights and pooling differ from table to table; one
    # table has no ids at all.
    specs = [
        (40, 3, torch.float64, torch.long, True, False, 25, 6),
        (7, 4, torch.float64, torch.long, False, True, 3, 0),
        (60, 16, torch.float32, torch.int32, False, True, 30, 8),
        (50, 129, torch.float64, torch.int32, True, True, 20, 5),
    ]
    weights, grads = _batch(specs)
    states = _states_of(name, weights)
    ours_w, ours_s = _copies(weights, states)
    ref_w, ref_s = _copies(weights, states)
    _on_tables(getattr(ops, _op_name(name)), name, ours_w, ours_s, grads)
    _on_tables(getattr(reference, _op_name(name)), name, ref_w, ref_s, grads)
    for t, weight in enumerate(weights):
        tol = dict(rtol=1e-5, atol=1e-5) if weight.dtype == torch.float32 else {}
        ours, ref = (ours_w[t], ours_s[t]), (ref_w[t], ref_s[t])
        _assert_same(ours, ref, weight, grads[t][0], **tol)


@pytest.mark.parametrize(
    "name", ["sparse_rowwise_adagrad_update", "sgd_without_decay", "sparse_adam_update"]
)
def test_a_batch_of_tables_equals_each_table_alone_on_any_thread_count(name):
    # With several threads the tables are deduplicated one per thread, except one with
    # more than a thread's share of all the ids, whose sort is split over the threads.
    specs = [
        (3000, 16, torch.float32, torch.long, True, True, 30000, 12),  # ~180k ids: split
        (5000, 32, torch.float32, torch.int32, False, False, 4000, 10),
        (1 << 22, 8, torch.float32, torch.long, False, True, 3000, 10),
        (900, 64, torch.float32, torch.long, True, False, 5000, 8),
    ]
    weights, grads = _batch(specs)
    states = _states_of(name, weights)
    want_w, want_s = _copies(weights, states)
    _, hyper = UPDATES[name]
    for t in range(len(weights)):  # alone, with the step count the batch gives table t
        alone = {**hyper, "steps": [hyper["steps"][0] + t]} if "steps" in hyper else hyper
        _on_one_table(getattr(ops, _op_name(name)), want_w[t], want_s[t], grads[t], alone)
    for n in (1, 2, 3):
        with torch_threads(n):
            got_w, got_s = _copies(weights, states)
            _on_tables(getattr(ops, _op_name(name)), name, got_w, got_s, grads)
        for t in range(len(weights)):
            assert torch.equal(got_w[t], want_w[t]), (n, t)
            assert all(torch.equal(a, b) for a, b in zip(got_s[t], want_s[t], strict=True))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_bad_id_in_any_table_raises_naming_it_and_changes_no_table(threads):
    specs = [(3000, 8, torch.float32, torch.long, False, False, 9000, 12)] * 4
    weights, grads = _batch(specs)
    grads[2][0][-5] = 3000  # past the last row of table 2
    grads[3][0][7] = -1
    states = _states_of("sparse_rowwise_adagrad_update", weights)
    before = [w.clone() for w in weights]
    with torch_threads(threads), pytest.raises(RuntimeError, match=r", table 2: id 3000 at"):
        _on_tables(ops.sparse_rowwise_adagrad_update, "sparse_rowwise_adagrad_update", weights,
                   states, grads)  # fmt: skip
    assert all(torch.equal(w, b) for w, b in zip(weights, before, strict=True))


def test_lists_of_different_lengths_raise():
    [w], [(ids, offsets, psw, grad_out, mean)] = _batch(
        [(10, 4, torch.float32, torch.long, False, False, 3, 4)]
    )
    with pytest.raises(RuntimeError, match="one entry per table in every list: 2 weights, 1 ids"):
        ops.sparse_sgd_update([w, w.clone()], [ids], [offsets] * 2, [psw] * 2, [grad_out] * 2,
                              [mean] * 2, 0.1)  # fmt: skip
    with pytest.raises(RuntimeError, match="1 weights, 2 steps"):
        ops.sparse_adam_update([w], [w.clone()], [w.clone()], [ids], [offsets], [psw], [grad_out],
                               [mean], 0.1, 0.9, 0.99, 1e-8, 0.0, [1, 1], False)  # fmt: skip


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(UPDATES))
@pytest.mark.parametrize("dim", [1, 3, 64, 129])
@pytest.mark.parametrize("mean", [False, True])
def test_cuda_update_matches_cpu(name, dim, mean):
    weight = torch.randn(300, dim)
    grad = random_grad(200, 300, 9, dim, dtype=torch.float32, weighted=True)
    _check_cuda_update_matches_cpu(name, weight, (*grad, mean), tol=1e-5)


def _check_cuda_update_matches_cpu(name, weight, grad, tol):
    kinds, hyper = UPDATES[name]
    op = getattr(ops, _op_name(name))
    states = [_state_like(weight, k) for k in kinds]
    cpu_w, cpu_s = weight.clone(), [s.clone() for s in states]
    _on_one_table(op, cpu_w, cpu_s, grad, hyper)
    gpu_w, gpu_s = weight.cuda(), [s.cuda() for s in states]
    _on_one_table(op, gpu_w, gpu_s, (*[t.cuda() for t in grad[:4]], grad[4]), hyper)
    torch.testing.assert_close(gpu_w.cpu(), cpu_w, rtol=tol, atol=tol)
    for g, c in zip(gpu_s, cpu_s, strict=True):
        torch.testing.assert_close(g.cpu(), c, rtol=tol, atol=tol)


def _grad_with_hot_rows(rows, dim):
    # The CUDA update sums a row of more than 256 occurrences in chunks of 256, one warp
    # each: row 5 has 1000 (the last chunk partial), row 17 has 257 (a chunk of one),
    # row rows - 1 exactly 256 (one warp, no chunks).
    ids, offsets, psw, grad_out = random_grad(600, rows, 9, dim, torch.float32, weighted=True)
    hot = torch.cat([torch.full((1000,), 5), torch.full((257,), 17), torch.full((256,), rows - 1)])
    assert ids.numel() >= hot.numel()
    ids = torch.where(torch.isin(ids, torch.tensor([5, 17, rows - 1])), 0, ids)
    ids[: hot.numel()] = hot[torch.randperm(hot.numel())]
    return ids, offsets, psw, grad_out


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(UPDATES))
@pytest.mark.parametrize("mean", [False, True])
def test_cuda_update_of_hot_rows_matches_cpu(name, mean):
    # Sums of up to 1000 terms in another order: float32 rounding, hence the tolerance.
    weight = torch.randn(300, 33)
    _check_cuda_update_matches_cpu(name, weight, (*_grad_with_hot_rows(300, 33), mean), tol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("hot_rows", [False, True], ids=["few_repeats", "hot_rows"])
@pytest.mark.parametrize("mean", [False, True])
def test_cuda_unique_row_grads_matches_cpu(mean, hot_rows):
    if hot_rows:
        ids, offsets, psw, grad_out = _grad_with_hot_rows(70, 33)
    else:
        ids, offsets, psw, grad_out = random_grad(100, 70, 8, 33, torch.float32, weighted=True)
    cpu = ops.unique_row_grads(ids, offsets, psw, grad_out, mean, 70)
    gpu = ops.unique_row_grads(*[t.cuda() for t in (ids, offsets, psw, grad_out)], mean, 70)
    assert torch.equal(gpu[0].cpu(), cpu[0])
    tol = 1e-4 if hot_rows else 1e-5
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=tol, atol=tol)


@pytest.mark.cuda
def test_cuda_bad_ids_raise():
    weight = torch.randn(5, 3, device="cuda")
    with pytest.raises(RuntimeError, match=r"id 7 at position 1 is outside \[0, 5\)"):
        ops.sparse_sgd_update(
            [weight],
            [torch.tensor([1, 7], device="cuda")],
            [torch.tensor([0, 2], device="cuda")],
            [None],
            [torch.ones(1, 3, device="cuda")],
            [False],
            0.1,
        )


def _to_cuda(weights, states, grads):
    """CUDA copies of a batch's tables, their states and their gradients."""
    cuda = [w.cuda() for w in weights], [[s.cuda() for s in ss] for ss in states]
    grads = [(*[None if t is None else t.cuda() for t in g[:4]], g[4]) for g in grads]
    return (*cuda, grads)


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(UPDATES))
def test_cuda_batch_of_tables_matches_cpu(name):
    # The CUDA kernels dedup and update a whole batch in one pass: tables of different
    # widths (0 to 129), sizes and pooling, one with hot rows, one with no ids, one of a
    # single row, must each come out as the CPU kernel updates them.
    specs = [
        (300, 33, torch.float32, torch.long, True, False, 600, 9),
        (7, 4, torch.float32, torch.long, False, True, 3, 0),
        (1, 1, torch.float32, torch.int32, False, False, 20, 5),
        (5, 0, torch.float32, torch.long, False, False, 4, 3),
        (500, 129, torch.float32, torch.long, True, True, 300, 12),
        (2000, 64, torch.float32, torch.int32, True, False, 400, 20),
    ]
    weights, grads = _batch(specs)
    grads[0] = (*_grad_with_hot_rows(300, 33), False)
    states = _states_of(name, weights)
    cpu_w, cpu_s = _copies(weights, states)
    _on_tables(getattr(ops, _op_name(name)), name, cpu_w, cpu_s, grads)
    gpu_w, gpu_s, gpu_grads = _to_cuda(weights, states, grads)
    _on_tables(getattr(ops, _op_name(name)), name, gpu_w, gpu_s, gpu_grads)
    for t in range(len(weights)):
        torch.testing.assert_close(gpu_w[t].cpu(), cpu_w[t], rtol=1e-4, atol=1e-4)
        for g, c in zip(gpu_s[t], cpu_s[t], strict=True):
            torch.testing.assert_close(g.cpu(), c, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "table, ids, offsets, message",
    [
        (2, [0, 1, 9, 2], [0, 2, 4], r", table 2: id 9 at position 2 is outside \[0, 9\)"),
        (1, [0, 1, 2, 3], [0, 3, 2, 4], r", table 1: offsets decrease"),
        (3, [0, 1, 2, 3], [0, 2, 3], r", table 3: offsets must start at 0 and end at ids"),
    ],
    ids=["bad_id", "decreasing_offsets", "offsets_short_of_the_ids"],
)
def test_cuda_bad_ids_or_offsets_in_any_table_raise_naming_it_and_change_no_table(
    table, ids, offsets, message
):
    weights, grads = _batch([(9, 8, torch.float32, torch.long, False, False, 50, 6)] * 4)
    grads[table] = (torch.tensor(ids), torch.tensor(offsets), None, torch.randn(len(offsets) - 1, 8),
                    False)  # fmt: skip
    states = _states_of("sparse_rowwise_adagrad_update", weights)
    gpu_w, gpu_s, gpu_grads = _to_cuda(weights, states, grads)
    with pytest.raises(RuntimeError, match=message):
        _on_tables(ops.sparse_rowwise_adagrad_update, "sparse_rowwise_adagrad_update", gpu_w,
                   gpu_s, gpu_grads)  # fmt: skip
    assert all(torch.equal(g.cpu(), w) for g, w in zip(gpu_w, weights, strict=True))


@pytest.mark.cuda
def test_cuda_tables_of_one_call_must_share_a_device():
    weights, grads = _batch([(9, 8, torch.float32, torch.long, False, False, 5, 3)] * 2)
    gpu_w, gpu_s, gpu_grads = _to_cuda(weights, [[], []], grads)
    with pytest.raises(RuntimeError, match=r", table 1: on cpu, table 0 on cuda"):
        _on_tables(ops.sparse_sgd_update, "sparse_sgd_update", [gpu_w[0], weights[1]], gpu_s,
                   [gpu_grads[0], grads[1]])  # fmt: skip


@pytest.mark.cuda
def test_cuda_batch_of_zero_width_tables_changes_nothing():
    # kernels.py times the CUDA dedup alone this way: every row is deduplicated (hot rows
    # chunked too), and none has a column or a state to change.
    weights, grads = _batch([(300, 0, torch.float32, torch.long, False, False, 100, 9)] * 3)
    grads[1] = (*_grad_with_hot_rows(300, 0), True)
    states = _states_of("sparse_rowwise_adagrad_update", weights)
    gpu_w, gpu_s, gpu_grads = _to_cuda(weights, states, grads)
    _on_tables(ops.sparse_rowwise_adagrad_update, "sparse_rowwise_adagrad_update", gpu_w, gpu_s,
               gpu_grads)  # fmt: skip
    assert all(torch.equal(g[0].cpu(), s[0]) for g, s in zip(gpu_s, states, strict=True))


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["sparse_rowwise_adagrad_update", "sparse_adam_update"])
@pytest.mark.parametrize("layout", ["column_block", "expanded", "transposed"])
def test_cuda_reads_grad_out_with_its_strides(name, layout):
    # A column block (a table's part of a collection's output gradient) and a stride-0
    # expansion are read in place; other layouts are packed first.
    kinds, hyper = UPDATES[name]
    weight = torch.randn(40, 6)
    ids, offsets, psw, _ = random_grad(25, 40, 6, 6, torch.float32, weighted=True)
    base = {"column_block": (25, 15), "expanded": (1, 6), "transposed": (6, 25)}[layout]
    base = torch.randn(*base)

    def laid_out(t):
        if layout == "column_block":
            return t[:, 5:11]
        return t.expand(25, 6) if layout == "expanded" else t.t()

    states = [_state_like(weight, k) for k in kinds]
    op = getattr(ops, _op_name(name))
    cpu_w, cpu_s = weight.clone(), [s.clone() for s in states]
    _on_one_table(op, cpu_w, cpu_s, (ids, offsets, psw, laid_out(base), True), hyper)
    gpu_w, gpu_s = weight.cuda(), [s.cuda() for s in states]
    gpu_grad = (ids.cuda(), offsets.cuda(), psw.cuda(), laid_out(base.cuda()), True)
    assert gpu_grad[3].stride() == laid_out(base).stride()
    _on_one_table(op, gpu_w, gpu_s, gpu_grad, hyper)
    torch.testing.assert_close(gpu_w.cpu(), cpu_w, rtol=1e-5, atol=1e-5)
    for g, c in zip(gpu_s, cpu_s, strict=True):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-5, atol=1e-5)
