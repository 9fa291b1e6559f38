import pytest
import torch

from recis import ops
from recis.ops import reference
from tests.ops.helpers import torch_threads


def random_bags(num_bags, rows, max_len, empty_fraction=0.2, dtype=torch.long):
    lengths = torch.randint(0, max_len + 1, (num_bags,))
    lengths[torch.rand(num_bags) < empty_fraction] = 0
    offsets = torch.zeros(num_bags + 1, dtype=dtype)
    offsets[1:] = torch.cumsum(lengths, 0)
    ids = torch.randint(0, rows, (int(lengths.sum()),), dtype=dtype)
    return ids, offsets


@pytest.mark.parametrize("dim", [1, 3, 4, 8, 12, 16, 24, 32, 48, 64, 127, 129, 200])
@pytest.mark.parametrize("pooling", [ops.SUM, ops.MEAN])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference_on_random_bags(dim, pooling, weighted):
    weight = torch.randn(50, dim)
    ids, offsets = random_bags(33, 50, 7)
    psw = torch.rand(ids.numel()) if weighted else None
    out = ops.pooled_lookup(weight, ids, offsets, psw, pooling)
    torch.testing.assert_close(out, reference.pooled_lookup(weight, ids, offsets, psw, pooling))


@pytest.mark.parametrize("dim", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("weighted", [False, True])
def test_rows_that_do_not_start_on_a_cache_line_match_the_reference(dim, weighted):
    # Rows of whole cache lines are prefetched line by line without a loop when they
    # start on a line; here the table starts one float into one (a view of a buffer).
    weight = torch.randn(50 * dim + 1)[1:].view(50, dim)
    assert weight.data_ptr() % 64 != 0
    ids, offsets = random_bags(300, 50, 30)
    psw = torch.rand(ids.numel()) if weighted else None
    out = ops.pooled_lookup(weight, ids, offsets, psw, ops.SUM)
    torch.testing.assert_close(out, reference.pooled_lookup(weight, ids, offsets, psw, ops.SUM))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_duplicates_and_a_single_row_table(dtype):
    weight = torch.randn(1, 5)
    ids = torch.zeros(6, dtype=dtype)
    offsets = torch.tensor([0, 6, 6], dtype=dtype)
    out = ops.pooled_lookup(weight, ids, offsets, None, ops.MEAN)
    torch.testing.assert_close(out[0], weight[0])
    assert torch.equal(out[1], torch.zeros(5))


def test_matches_torch_embedding_bag():
    weight = torch.randn(100, 16)
    ids, offsets = random_bags(64, 100, 10)
    psw = torch.rand(ids.numel())
    ours = ops.pooled_lookup(weight, ids, offsets, psw, ops.SUM)
    theirs = torch.nn.functional.embedding_bag(
        ids, weight, offsets[:-1], mode="sum", per_sample_weights=psw
    )
    torch.testing.assert_close(ours, theirs)


def test_no_bags_and_no_ids():
    weight = torch.randn(4, 3)
    assert ops.pooled_lookup(
        weight, torch.zeros(0, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    ).shape == (0, 3)
    out = ops.pooled_lookup(
        weight, torch.zeros(0, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    )
    assert torch.equal(out, torch.zeros(2, 3))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dim", [1, 8, 129])
@pytest.mark.parametrize("pooling", [ops.SUM, ops.MEAN])
def test_writes_into_a_column_block_of_a_wider_output(dim, pooling, device):
    weight = torch.randn(50, dim)
    ids, offsets = random_bags(33, 50, 7)
    psw = torch.rand(ids.numel())
    want = reference.pooled_lookup(weight, ids, offsets, psw, pooling)
    weight, ids, offsets, psw = (t.to(device) for t in (weight, ids, offsets, psw))
    out = torch.full((33, dim + 9), 7.0, device=device)
    got = ops.pooled_lookup(weight, ids, offsets, psw, pooling, out=out[:, 4 : 4 + dim])
    assert got.data_ptr() == out[:, 4:].data_ptr()
    wide = out.cpu()
    torch.testing.assert_close(wide[:, 4 : 4 + dim], want)
    assert torch.equal(wide[:, :4], torch.full((33, 4), 7.0))
    assert torch.equal(wide[:, 4 + dim :], torch.full((33, 5), 7.0))


def test_bad_out_raises():
    weight = torch.randn(4, 3)
    ids, offsets = torch.tensor([1, 2]), torch.tensor([0, 1, 2])
    with pytest.raises(RuntimeError, match=r"out must be \[num_bags, dim\] = \[2, 3\]"):
        ops.pooled_lookup(weight, ids, offsets, out=torch.empty(3, 3))
    with pytest.raises(RuntimeError, match="dtype"):
        ops.pooled_lookup(weight, ids, offsets, out=torch.empty(2, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="contiguous columns"):
        ops.pooled_lookup(weight, ids, offsets, out=torch.empty(3, 2).t())


def test_bad_inputs_raise_instead_of_crashing():
    weight = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="outside \\[0, 4\\)"):
        ops.pooled_lookup(weight, torch.tensor([4]), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="outside"):
        ops.pooled_lookup(weight, torch.tensor([-1]), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match=r"end at ids\.numel"):
        ops.pooled_lookup(weight, torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="decrease"):
        ops.pooled_lookup(weight, torch.tensor([1, 2]), torch.tensor([0, 2, 1, 2]))
    with pytest.raises(RuntimeError, match=r"recis\.pooled_lookup: offsets must have the dtype"):
        ops.pooled_lookup(weight, torch.tensor([1]), torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"recis\.pooled_lookup: pooling must be 0 \(sum\)"):
        ops.pooled_lookup(weight, torch.tensor([1]), torch.tensor([0, 1]), pooling=7)
    # Nothing to pool does not skip the checks.
    with pytest.raises(RuntimeError, match=r"end at ids\.numel"):
        ops.pooled_lookup(weight, torch.tensor([5]), torch.tensor([0]))
    with pytest.raises(RuntimeError, match="outside \\[0, 4\\)"):
        ops.pooled_lookup(torch.randn(4, 0), torch.tensor([9]), torch.tensor([0, 1]))


@pytest.mark.parametrize("dim", [3, 64, 129])
@pytest.mark.parametrize("bad", [-1, 1000, 10**12])
def test_a_bad_id_deep_in_a_large_batch_is_named(dim, bad):
    # Ids are checked inside the pooling pass, which runs over several threads and, for
    # wide rows, several column blocks: a bad id anywhere must raise, never be read.
    weight = torch.randn(1000, dim)
    ids, offsets = random_bags(20_000, 1000, 10)
    where = int(ids.numel() * 0.7)
    ids[where] = bad
    with pytest.raises(RuntimeError, match=rf"id {bad} at position {where} is outside"):
        ops.pooled_lookup(weight, ids, offsets)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_weight_dtypes(dtype):
    weight = torch.randn(20, 9).to(dtype)
    ids, offsets = random_bags(10, 20, 5)
    out = ops.pooled_lookup(weight, ids, offsets)
    assert out.dtype == dtype
    torch.testing.assert_close(
        out.double(), reference.pooled_lookup(weight.double(), ids, offsets), rtol=2e-2, atol=2e-2
    )


@pytest.mark.cuda
def test_cuda_matches_cpu():
    weight = torch.randn(100, 33)
    ids, offsets = random_bags(40, 100, 6)
    psw = torch.rand(ids.numel())
    for pooling in (ops.SUM, ops.MEAN):
        cpu = ops.pooled_lookup(weight, ids, offsets, psw, pooling)
        gpu = ops.pooled_lookup(weight.cuda(), ids.cuda(), offsets.cuda(), psw.cuda(), pooling)
        torch.testing.assert_close(gpu.cpu(), cpu)


@pytest.mark.cuda
def test_cuda_bad_inputs_raise():
    weight = torch.randn(4, 3, device="cuda")
    cuda = dict(device="cuda")
    with pytest.raises(RuntimeError, match=r"id 4 at position 1 is outside \[0, 4\)"):
        ops.pooled_lookup(weight, torch.tensor([0, 4], **cuda), torch.tensor([0, 2], **cuda))
    with pytest.raises(RuntimeError, match=r"end at ids\.numel"):
        ops.pooled_lookup(weight, torch.tensor([1, 2], **cuda), torch.tensor([0, 1], **cuda))
    with pytest.raises(RuntimeError, match="decrease"):
        ops.pooled_lookup(weight, torch.tensor([1, 2], **cuda), torch.tensor([0, 2, 1, 2], **cuda))


@pytest.mark.cuda
@pytest.mark.parametrize("on_host", ["weight", "ids", "offsets", "per_sample_weights"])
def test_cuda_lookup_with_a_tensor_on_another_device_raises(on_host):
    # The kernel would read a host pointer on the GPU: it must be refused first.
    args = {
        "weight": torch.randn(4, 3),
        "ids": torch.tensor([0, 3]),
        "offsets": torch.tensor([0, 2]),
        "per_sample_weights": torch.ones(2),
    }
    args = {k: v if k == on_host else v.cuda() for k, v in args.items()}
    with pytest.raises(RuntimeError, match="device"):
        ops.pooled_lookup(*args.values())


@pytest.mark.parametrize("dim", [16, 64])
def test_one_id_per_bag_over_several_threads(dim):
    # Rows are prefetched ahead across bag boundaries, up to the end of each thread's
    # range of bags: every range start and end must still pool exactly its own ids.
    weight = torch.randn(1000, dim)
    offsets = torch.arange(4097)
    ids = torch.randint(0, 1000, (4096,))
    with torch_threads(2):
        out = ops.pooled_lookup(weight, ids, offsets)
    torch.testing.assert_close(out, weight[ids])


# --- a batch of tables into one output ---

ON_ANY_DEVICE = pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
)


def _tables(specs, batch, dtype=torch.float32):
    """Weights and bags per spec (rows, dim, features, mean, weighted, index dtype)."""
    weights, bags = [], []
    for rows, dim, features, mean, weighted, index in specs:
        weights.append(torch.randn(rows, dim, dtype=dtype))
        ids, offsets = random_bags(features * batch, rows, 6, dtype=index)
        psw = torch.rand(ids.numel()) if weighted else None
        bags.append((ids, offsets, psw, mean, features))
    return weights, bags


def _lookup_tables(fn, weights, bags, out):
    ids, offsets, psw, mean, features = (list(field) for field in zip(*bags, strict=True))
    return fn(weights, ids, offsets, psw, mean, features, out)


def _on(device, weights, bags):
    weights = [w.to(device) for w in weights]
    bags = [
        (ids.to(device), offsets.to(device), None if psw is None else psw.to(device), mean, n)
        for ids, offsets, psw, mean, n in bags
    ]
    return weights, bags


@ON_ANY_DEVICE
def test_a_batch_of_tables_matches_the_reference(device):
    # Widths 1 to 129, one to three features per table, sum and mean, weighted or not,
    # int32 and int64 ids, empty bags; written into a column block of a wider tensor.
    batch = 17
    specs = [
        (30, 1, 1, False, False, torch.long),
        (40, 3, 2, True, True, torch.int32),
        (1, 16, 3, True, False, torch.long),
        (50, 129, 1, False, True, torch.long),
        (25, 8, 2, False, False, torch.int32),
    ]
    weights, bags = _tables(specs, batch)
    width = sum(dim * n for _, dim, n, *_ in specs)
    want = _lookup_tables(reference.pooled_lookup_tables, weights, bags, torch.zeros(batch, width))
    dev_weights, dev_bags = _on(device, weights, bags)
    wide = torch.full((batch, width + 7), 5.0, device=device)
    got = _lookup_tables(ops.pooled_lookup_tables, dev_weights, dev_bags, wide[:, 3 : 3 + width])
    assert got.data_ptr() == wide[:, 3:].data_ptr()
    wide = wide.cpu()
    torch.testing.assert_close(wide[:, 3 : 3 + width], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(wide[:, :3], torch.full((batch, 3), 5.0))
    assert torch.equal(wide[:, 3 + width :], torch.full((batch, 4), 5.0))


def test_a_table_of_another_dtype_is_pooled_in_its_own_and_converted():
    batch = 9
    weights, bags = _tables([(20, 4, 2, True, True, torch.long)] * 3, batch)
    weights[0] = weights[0].double()
    weights[2] = weights[2].bfloat16()
    out = _lookup_tables(ops.pooled_lookup_tables, weights, bags, torch.empty(batch, 24).double())
    for t, w in enumerate(weights):
        alone = _lookup_tables(
            ops.pooled_lookup_tables, [w], [bags[t]], torch.empty(batch, 8, dtype=w.dtype)
        )
        torch.testing.assert_close(out[:, 8 * t : 8 * (t + 1)], alone.double())


def test_no_tables_and_no_bags():
    assert ops.pooled_lookup_tables([], [], [], [], [], [], torch.empty(4, 0)).shape == (4, 0)
    weights, bags = _tables([(5, 3, 2, True, False, torch.long)], 0)
    out = _lookup_tables(ops.pooled_lookup_tables, weights, bags, torch.empty(0, 6))
    assert out.shape == (0, 6)


@ON_ANY_DEVICE
@pytest.mark.parametrize(
    "ids, offsets, message",
    [
        ([0, 9, 1], [0, 1, 2, 3], r", table 2: id 9 at position 1 is outside \[0, 9\)"),
        ([0, 1, 2], [0, 2, 1, 3], r", table 2: offsets decrease"),
        ([0, 1, 2], [0, 1, 2, 2], r", table 2: offsets must start at 0 and end at ids"),
    ],
    ids=["bad_id", "decreasing_offsets", "offsets_short_of_the_ids"],
)
def test_bad_ids_or_offsets_in_any_table_raise_naming_it(device, ids, offsets, message):
    weights, bags = _tables([(9, 4, 1, False, False, torch.long)] * 3, 3)
    bags[2] = (torch.tensor(ids), torch.tensor(offsets), None, False, 1)
    weights, bags = _on(device, weights, bags)
    with pytest.raises(RuntimeError, match=message):
        _lookup_tables(ops.pooled_lookup_tables, weights, bags, torch.empty(3, 12, device=device))


def test_bad_shapes_raise_naming_the_table():
    weights, bags = _tables([(9, 4, 2, False, False, torch.long)] * 2, 3)
    out = torch.empty(3, 16)
    bad = [bags[0], (bags[1][0], bags[1][1][:5], None, False, 2)]
    with pytest.raises(
        RuntimeError,
        match=r", table 1: offsets has 5 entries; 2 feature\(s\) of a batch of 3 need 7",
    ):
        _lookup_tables(ops.pooled_lookup_tables, weights, bad, out)
    with pytest.raises(RuntimeError, match=r"out must be \[batch, 16\]"):
        _lookup_tables(ops.pooled_lookup_tables, weights, bags, torch.empty(3, 12))
    with pytest.raises(RuntimeError, match=r", table 0: features must be >= 1, got 0"):
        bad = [(*bags[0][:4], 0), bags[1]]
        _lookup_tables(ops.pooled_lookup_tables, weights, bad, out)
    with pytest.raises(RuntimeError, match="one entry per table in every list: 2 weights, 1 mean"):
        ids, offsets, psw, mean, features = (list(f) for f in zip(*bags, strict=True))
        ops.pooled_lookup_tables(weights, ids, offsets, psw, mean[:1], features, out)
    with pytest.raises(RuntimeError, match=r", table 1: ids must be int32 or int64"):
        bad = [bags[0], (bags[1][0].float(), *bags[1][1:])]
        _lookup_tables(ops.pooled_lookup_tables, weights, bad, out)


@pytest.mark.cuda
def test_cuda_batch_needs_float32_and_one_device():
    weights, bags = _tables([(9, 4, 1, False, False, torch.long)] * 2, 3)
    gpu_weights, gpu_bags = _on("cuda", weights, bags)
    with pytest.raises(RuntimeError, match=r", table 1: weight on cpu, out on cuda"):
        _lookup_tables(ops.pooled_lookup_tables, [gpu_weights[0], weights[1]],
                       [gpu_bags[0], bags[1]], torch.empty(3, 8, device="cuda"))  # fmt: skip
    with pytest.raises(RuntimeError, match=r"float32 only, got out Double"):
        gpu_weights = [w.double() for w in gpu_weights]
        _lookup_tables(ops.pooled_lookup_tables, gpu_weights, gpu_bags,
                       torch.empty(3, 8, device="cuda", dtype=torch.float64))  # fmt: skip
