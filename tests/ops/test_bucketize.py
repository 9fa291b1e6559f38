import pytest
import torch

from recis import ops
from recis.ops import reference


def _random_case(num_bags: int, rows: int, num_buckets: int, weighted: bool, dtype=torch.int64):
    lengths = torch.randint(0, 5, (num_bags,), dtype=dtype)
    if num_bags:
        lengths[0] = 0  # an empty bag
    n = int(lengths.sum())
    ids = torch.randint(0, rows, (n,), dtype=dtype)
    if n > 2:
        ids[1] = ids[0]  # a duplicate id
    weights = torch.rand(n) if weighted else None
    # Uneven blocks, including an empty one when there are enough buckets.
    cuts = sorted(torch.randint(0, rows + 1, (num_buckets - 1,)).tolist())
    boundaries = torch.tensor([0, *cuts, rows], dtype=torch.int64)
    return ids, lengths, weights, boundaries


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("num_buckets", [1, 2, 3, 4, 8, 17])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_bucketize_matches_reference(weighted, num_buckets, dtype):
    for num_bags in (0, 1, 7, 40):
        ids, lengths, weights, boundaries = _random_case(num_bags, 23, num_buckets, weighted, dtype)
        got = ops.bucketize(ids, lengths, weights, boundaries)
        want = reference.bucketize(ids, lengths, weights, boundaries)
        assert torch.equal(got.lengths, want[0])
        assert got.lengths.dtype == lengths.dtype
        assert torch.equal(got.ids, want[1])
        assert got.ids.dtype == ids.dtype
        assert torch.equal(got.permutation, want[3])
        if weighted:
            torch.testing.assert_close(got.weights, want[2])
        else:
            assert got.weights is None
        # The permutation undoes the reordering: bucket k's local ids + its start
        # are the global ids at the permuted positions.
        starts = boundaries[:-1].repeat_interleave(got.lengths.view(num_buckets, -1).sum(1))
        assert torch.equal(ids[got.permutation].long(), got.ids.long() + starts)


def test_ids_on_a_boundary_go_to_the_last_bucket_starting_there():
    # Buckets 1-3 are empty (they start where bucket 4 does): id 4 is bucket 4's.
    boundaries = torch.tensor([0, 4, 4, 4, 4, 6, 8])
    ids = torch.tensor([0, 3, 4, 5, 6, 7])
    got = ops.bucketize(ids, torch.tensor([6]), None, boundaries)
    assert got.lengths.tolist() == [2, 0, 0, 0, 2, 2]
    assert got.ids.tolist() == [0, 3, 0, 1, 0, 1]
    assert got.permutation.tolist() == [0, 1, 2, 3, 4, 5]


def test_bucketize_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match=r"id 9 at position 1 is outside \[0, 8\)"):
        ops.bucketize(torch.tensor([1, 9]), torch.tensor([2]), None, torch.tensor([0, 4, 8]))
    with pytest.raises(RuntimeError, match="lengths sum"):
        ops.bucketize(torch.tensor([1, 2]), torch.tensor([3]), None, torch.tensor([0, 4, 8]))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize(
    "ids, lengths, boundaries, error, message",
    [
        ([1, 9], [2], [0, 4, 8], ValueError, r"id 9 at position 1 is outside \[0, 8\)"),
        ([1, -1], [2], [0, 4, 8], ValueError, r"id -1 at position 1 is outside \[0, 8\)"),
        ([1, 2], [3], [0, 4, 8], RuntimeError, "lengths sum to 3 but there are 2 ids"),
        ([1, 2], [3, -1], [0, 4, 8], RuntimeError, r"lengths\[1\] is negative"),
        ([1, 2], [2], [0, 5, 4, 8], RuntimeError, "boundaries must be non-decreasing"),
    ],
    ids=["id_above", "id_below", "lengths_sum", "negative_length", "decreasing_boundaries"],
)
def test_the_op_names_bad_values_on_every_device(device, ids, lengths, boundaries, error, message):
    # The kernels would write outside their buffers on any of these. A bad id is bad
    # data (ValueError, as everywhere in recis); the rest are bad arguments.
    with pytest.raises(error, match=message):
        torch.ops.recis.bucketize(
            torch.tensor(ids, device=device),
            torch.tensor(lengths, device=device),
            None,
            torch.tensor(boundaries, device=device),
        )


@pytest.mark.cuda
def test_cuda_bucketize_with_ids_or_lengths_on_the_host_raises():
    ids, lengths, boundaries = torch.tensor([1, 5]), torch.tensor([2]), torch.tensor([0, 4, 8])
    with pytest.raises(RuntimeError, match="device"):
        torch.ops.recis.bucketize(ids, lengths.cuda(), None, boundaries)
    with pytest.raises(RuntimeError, match="device"):
        torch.ops.recis.bucketize(ids.cuda(), lengths, None, boundaries)
    # Boundaries may stay on the host.
    got = torch.ops.recis.bucketize(ids.cuda(), lengths.cuda(), None, boundaries)
    assert got[1].tolist() == [1, 1]


@pytest.mark.cuda
def test_bucketize_cuda_matches_cpu():
    ids, lengths, weights, boundaries = _random_case(300, 1000, 4, True)
    cpu = ops.bucketize(ids, lengths, weights, boundaries)
    gpu = ops.bucketize(ids.cuda(), lengths.cuda(), weights.cuda(), boundaries.cuda())
    for a, b in zip(cpu, gpu, strict=True):
        assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_long_bags_keep_their_order_in_every_bucket(device):
    # Bags of thousands of ids (a user's history), spread over many buckets.
    lengths = torch.tensor([5000, 0, 1, 3000, 7])
    ids = torch.randint(0, 10_000, (int(lengths.sum()),))
    weights = torch.rand(ids.numel())
    boundaries = torch.arange(0, 10_001, 625)  # 16 buckets
    got = ops.bucketize(ids.to(device), lengths.to(device), weights.to(device), boundaries)
    want = reference.bucketize(ids, lengths, weights, boundaries)
    assert torch.equal(got.lengths.cpu(), want[0])
    assert torch.equal(got.ids.cpu(), want[1])
    assert torch.equal(got.weights.cpu(), want[2])
    assert torch.equal(got.permutation.cpu(), want[3])
