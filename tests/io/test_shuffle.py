"""CriteoDataset(shuffle_window=K): each rank's records permuted in windows of K
batches, resumed exactly at any batch, and read once over a change of world size."""

import itertools
from pathlib import Path

import pytest

from recis.io import CriteoDataset
from tests.io.test_criteo import SIZES, batch_equal, c1_rows, read_through_resizes, write_parts


def read(paths, batch_size=5, **kwargs):
    return list(CriteoDataset(paths, batch_size, SIZES, prefetch=0, **kwargs))


def test_a_window_permutes_the_records_of_its_batches_and_keeps_their_sizes(tmp_path):
    paths, n = write_parts(tmp_path, [23, 9])
    ordered = read(paths)
    shuffled = read(paths, shuffle_window=3)
    assert [b["label"].numel() for b in shuffled] == [b["label"].numel() for b in ordered]
    # Each window of 3 batches (15 records) holds the same records, in another order.
    rows = [c for b in shuffled for c in c1_rows(b)]
    windows = [rows[i : i + 15] for i in range(0, n, 15)]
    assert [sorted(w) for w in windows] == [list(range(i, min(i + 15, n))) for i in range(0, n, 15)]
    assert rows != list(range(n))
    # The same seed gives the same order; another seed, or the next epoch, another.
    assert all(map(batch_equal, read(paths, shuffle_window=3), shuffled))
    other = [c for b in read(paths, shuffle_window=3, seed=1) for c in c1_rows(b)]
    ds = CriteoDataset(paths, 5, SIZES, prefetch=0, shuffle_window=3)
    epoch0, epoch1 = ([c for b in ds for c in c1_rows(b)] for _ in range(2))
    assert epoch0 == rows and other != rows and epoch1 != rows
    assert sorted(epoch1) == list(range(n))


def test_each_epoch_lays_the_files_out_in_another_order(tmp_path):
    paths, _ = write_parts(tmp_path, [5] * 8)
    ds = CriteoDataset(paths, 5, SIZES, rank=0, world_size=2, prefetch=0, shuffle_window=2)
    orders = []
    for _ in range(3):
        it = iter(ds)
        next(it)
        orders.append([w[0] for w in ds.state_dict()["work"]])
        list(it)
    assert len({tuple(o) for o in orders}) == 3, orders  # about 4 of 8 files, drawn anew
    assert any(o != sorted(o) for o in orders)
    in_order = [w[0] for w in read_work(paths, shuffle_window=0)]
    assert in_order == sorted(in_order) and in_order[0] == 0


def read_work(paths, **kwargs):
    ds = CriteoDataset(paths, 5, SIZES, rank=0, world_size=2, prefetch=0, **kwargs)
    next(iter(ds))
    return ds.state_dict()["work"]


def test_a_rank_that_had_not_started_the_epoch_reshards_in_its_file_order(tmp_path):
    # Rank 1 finished epoch 0 (its next epoch not dealt yet) while rank 0 read a batch
    # of epoch 1: what rank 1 would have read of epoch 1 is dealt in the order it would
    # have used, whatever the new ranks' own settings.
    paths, n = write_parts(tmp_path, [5] * 8)
    kwargs = {"prefetch": 0, "shuffle_window": 2, "seed": 3}
    ranks = [CriteoDataset(paths, 5, SIZES, rank=r, world_size=2, **kwargs) for r in range(2)]
    for ds in ranks:
        list(ds)
    it = iter(ranks[0])
    read = c1_rows(next(it))
    states = [ds.state_dict() for ds in ranks]
    assert states[1]["epoch"] == 1 and states[1]["work"] is None
    rows = list(read)
    for r in range(3):
        ds = CriteoDataset(paths, 5, SIZES, rank=r, world_size=3, prefetch=0)  # no shuffle
        ds.load_resharded_state_dict(states, r, 3)
        rows += [c for b in ds for c in c1_rows(b)]
    assert sorted(rows) == list(range(n))


@pytest.mark.parametrize("compress", [False, True], ids=["text", "gz"])
def test_a_position_inside_a_window_resumes_exactly(tmp_path, compress):
    paths, _ = write_parts(tmp_path, [23, 9, 14], compress)
    for world_size, rank in ((1, 0), (2, 1)):
        kwargs = {"rank": rank, "world_size": world_size, "shuffle_window": 3, "seed": 7}
        full = read(paths, **kwargs)
        for stop in range(len(full)):
            ds = CriteoDataset(paths, 5, SIZES, prefetch=0, **kwargs)
            got = list(itertools.islice(iter(ds), stop))
            state = ds.state_dict()
            ds.close()
            resumed = CriteoDataset(paths, 5, SIZES, prefetch=0, **kwargs)
            resumed.load_state_dict(state)
            rest = list(resumed)
            assert len(got) + len(rest) == len(full)
            assert all(map(batch_equal, got + rest, full)), stop


def test_skipped_malformed_records_resume_inside_a_window(tmp_path):
    paths, n = write_parts(tmp_path, [23, 9, 14])
    lines = Path(paths[0]).read_text().splitlines()
    lines[3], lines[17] = "garbage", "1\tzz"
    Path(paths[0]).write_text("\n".join(lines) + "\n")
    kwargs = {"shuffle_window": 3, "skip_malformed": True, "prefetch": 0}
    full = list(CriteoDataset(paths, 5, SIZES, **kwargs))
    assert sorted(c for b in full for c in c1_rows(b)) == sorted(set(range(n)) - {3, 17})
    for stop in range(len(full)):
        ds = CriteoDataset(paths, 5, SIZES, **kwargs)
        got = list(itertools.islice(iter(ds), stop))
        state = ds.state_dict()
        ds.close()
        resumed = CriteoDataset(paths, 5, SIZES, **kwargs)
        resumed.load_state_dict(state)
        assert all(map(batch_equal, got + list(resumed), full)), stop
        assert resumed.num_malformed == 2  # each counted once, read again or not


@pytest.mark.parametrize(
    "plan",
    [
        [(2, 1), (1, None)],  # inside the first window: what it had not handed out
        [(2, 4), (3, None)],  # inside the second
        [(3, 2), (2, 1), (4, None)],  # windows of what a resize left, resized again
        [(2, 1), (3, 1), (2, 1), (1, None)],
        [(2, 3), (2, None)],  # at a window's end: nothing left of it
        # One rank inside a window that started and ended inside what a resize left of
        # a window (of 8 batches, the whole share: 4 records short of 5 batches), and
        # one just after such a window.
        [(2, 1, {"shuffle_window": 8}), (1, 3, {"shuffle_window": 2}), (2, None)],
        [(2, 1, {"shuffle_window": 8}), (1, 2, {"shuffle_window": 2}), (3, None)],
    ],
)
@pytest.mark.parametrize("compress", [False, True], ids=["text", "gz"])
def test_resized_ranks_read_the_rest_of_a_shuffled_epoch_once(tmp_path, plan, compress):
    paths, n = write_parts(tmp_path, [9, 14, 3, 11, 8, 6], compress)
    rows, states, counts = read_through_resizes(paths, plan, shuffle_window=3)
    assert sorted(rows) == list(range(n))
    assert all(s["epoch"] == 1 and s["work"] is None for s in states)
    # The new ranks' shares stay about equal (an epoch ends when the first runs out):
    # each takes an equal part of every window left, and bytes of the rest. (A .gz file
    # read in part weighs as much as a whole one: its rest's size is not known.)
    assert compress or max(counts) - min(counts) <= 4, counts


def test_a_window_whose_files_changed_is_named(tmp_path):
    paths, _ = write_parts(tmp_path, [9, 14, 3, 11, 8, 6])
    _, states, _ = read_through_resizes(paths, [(2, 1)], shuffle_window=3)
    write_parts(tmp_path, [8, 14, 3, 11, 8, 6])  # part0.tsv loses a row
    ds = CriteoDataset(paths, 5, SIZES, rank=0, world_size=1, shuffle_window=3)
    ds.load_resharded_state_dict(states, 0, 1)
    with pytest.raises(ValueError, match=r"holds 15 records but 14 were read again from .*part0"):
        list(ds)


def test_a_resized_shuffled_position_resumes_on_the_same_ranks(tmp_path):
    paths, n = write_parts(tmp_path, [9, 14, 3, 11, 8, 6])
    rows, states, _ = read_through_resizes(paths, [(2, 1), (3, 1)], shuffle_window=3)
    # Each of the 3 ranks inside what the resize left of a window: resumed from its state.
    for r in range(3):
        ds = CriteoDataset(paths, 5, SIZES, rank=r, world_size=3, prefetch=0, shuffle_window=3)
        ds.load_state_dict(states[r])
        rows += [i for b in ds for i in c1_rows(b)]
    assert sorted(rows) == list(range(n))


def test_a_position_inside_what_a_resize_left_resumes_on_the_same_ranks(tmp_path):
    paths, n = write_parts(tmp_path, [9, 14, 3, 11, 8, 6])
    # One rank, windows of 1 batch, inside what a resize left of a window.
    rows, states, _ = read_through_resizes(
        paths, [(2, 1, {"shuffle_window": 8}), (1, 2, {"shuffle_window": 1})], shuffle_window=1
    )
    assert states[0]["position"] == {"taken": 10} and states[0]["window"] is None
    ds = CriteoDataset(paths, 5, SIZES, rank=0, world_size=1, prefetch=0, shuffle_window=1)
    ds.load_state_dict(states[0])
    rows += [i for b in ds for i in c1_rows(b)]
    assert sorted(rows) == list(range(n))


def test_a_position_inside_a_window_needs_the_same_window_and_batch_size(tmp_path):
    paths, _ = write_parts(tmp_path, [23])
    ds = CriteoDataset(paths, 5, SIZES, shuffle_window=3)
    next(iter(ds))
    state = ds.state_dict()
    ds.close()
    for batch_size, window in ((5, 2), (4, 3)):
        other = CriteoDataset(paths, batch_size, SIZES, shuffle_window=window)
        with pytest.raises(ValueError, match="inside a shuffle window of 3 batches of 5"):
            other.load_state_dict(state)


def test_a_negative_window_is_refused(tmp_path):
    paths, _ = write_parts(tmp_path, [3])
    with pytest.raises(ValueError, match="shuffle_window must be >= 0 batches, got -1"):
        CriteoDataset(paths, 5, SIZES, shuffle_window=-1)
