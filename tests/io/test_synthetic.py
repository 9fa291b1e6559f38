import pytest
import torch

from recis.framework.metrics import binary_auc
from recis.io import SPARSE_NAMES, SyntheticCriteoDataset
from recis.io.synthetic import _HIDDEN_IDS, zipf_ranks

SIZES = [50 + 10 * i for i in range(26)]


def batch_equal(a, b):
    return (
        torch.equal(a["dense"], b["dense"])
        and torch.equal(a["label"], b["label"])
        and torch.equal(a["sparse"].values(), b["sparse"].values())
        and torch.equal(a["sparse"].lengths(), b["sparse"].lengths())
    )


def make(**kw):
    args = {"batch_size": 64, "table_sizes": SIZES, "num_batches": 6, "rank": 0, "world_size": 1}
    args.update(kw)
    return SyntheticCriteoDataset(**args)


def test_shapes_and_ranges():
    batch = next(iter(make(prefetch=0)))
    assert batch["dense"].shape == (64, 13) and batch["dense"].dtype == torch.float32
    assert bool((batch["dense"] >= 0).all())
    assert batch["label"].shape == (64,)
    assert set(batch["label"].tolist()) <= {0.0, 1.0}
    kjt = batch["sparse"]
    assert kjt.keys() == SPARSE_NAMES and kjt.stride() == 64
    for f, size in zip(SPARSE_NAMES, SIZES, strict=True):
        ids = kjt[f].values()
        assert bool((ids >= 0).all()) and bool((ids < size).all())
    multi = make(max_ids_per_feature=3).make_batch(0)[0]["sparse"]
    assert set(multi.lengths().tolist()) == {1, 2, 3}


def test_deterministic_per_seed_and_rank():
    a = list(make(rank=1, world_size=2))
    b = list(make(rank=1, world_size=2, prefetch=0))
    assert len(a) == 6 and all(batch_equal(x, y) for x, y in zip(a, b, strict=True))
    other_rank = next(iter(make(rank=0, world_size=2)))
    other_seed = next(iter(make(rank=1, world_size=2, seed=7)))
    assert not batch_equal(a[0], other_rank)
    assert not batch_equal(a[0], other_seed)


@pytest.mark.parametrize("max_ids", [1, 3])
def test_hidden_logits_are_the_model_of_the_batch_features(max_ids):
    # logit = scale * (w . standardized dense + bias + sum over tables of w_t * the mean
    # hidden effect of the bag's ids), the effect of an id being that of its Zipf rank
    # (the id scattered back) modulo the hidden ids.
    ds = make(max_ids_per_feature=max_ids, signal_scale=0.7)
    batch, logit = ds.make_batch(3)
    dense = (batch["dense"].double() - ds._dense_mu * 0.8) / 1.5
    want = dense @ ds._dense_w + ds._bias
    for t, (key, size) in enumerate(zip(SPARSE_NAMES, SIZES, strict=True)):
        bags = batch["sparse"][key]
        ranks = bags.values() * pow(int(ds._multipliers[t]), -1, size) % size
        effects = ds._effects[t, ranks % _HIDDEN_IDS]
        sample = torch.repeat_interleave(torch.arange(64), bags.lengths())
        mean_effect = torch.zeros(64, dtype=torch.float64).index_add_(0, sample, effects)
        want += ds._feature_w[t] * mean_effect / bags.lengths()
    torch.testing.assert_close(logit, want * 0.7)


@pytest.mark.parametrize("max_ids", [1, 3])
def test_labels_follow_the_hidden_model(max_ids):
    ds = make(batch_size=512, table_sizes=1000, max_ids_per_feature=max_ids)
    made = [ds.make_batch(i) for i in range(4)]
    labels = torch.cat([batch["label"] for batch, _ in made])
    hidden_logits = torch.cat([logit for _, logit in made])
    auc = binary_auc(torch.sigmoid(hidden_logits), labels)
    assert auc > 0.75
    assert 0.15 < float(labels.mean()) < 0.5


def test_zipf_is_skewed():
    g = torch.Generator().manual_seed(0)
    ranks = zipf_ranks(10_000, 1.1, 20_000, g)
    assert int(ranks.min()) >= 0 and int(ranks.max()) < 10_000
    # Rank 0 is by far the most frequent, and a long tail exists.
    counts = torch.bincount(ranks, minlength=10_000)
    assert int(counts.argmax()) == 0 and counts[0] > 20 * counts[100]
    assert int((counts > 0).sum()) > 1000


def test_exact_resume_and_epochs():
    full = list(make())
    ds = make(prefetch=3)
    it = iter(ds)
    for _ in range(2):
        next(it)
    state = ds.state_dict()
    ds.close()
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 4 and all(batch_equal(a, b) for a, b in zip(rest, full[2:], strict=True))
    assert resumed.epoch == 1 and batch_equal(next(iter(resumed)), full[0])
    resumed.close()
    with pytest.raises(ValueError, match="rank"):
        make(rank=1, world_size=2).load_state_dict(state)


def test_resized_ranks_go_on_with_their_own_streams():
    states = []
    for rank, read in ((0, 2), (1, 3)):
        ds = make(rank=rank, world_size=2)
        it = iter(ds)
        for _ in range(read):
            next(it)
        states.append(ds.state_dict())
        ds.close()
    for rank, world, first in ((0, 1, 2), (1, 3, 3), (2, 3, 0)):
        ds = make(rank=rank, world_size=world)
        ds.load_resharded_state_dict(states, rank, world)
        # Rank 2 did not exist: its stream starts at batch 0, read by no rank before.
        own = make(rank=rank, world_size=world)
        assert all(batch_equal(a, b) for a, b in zip(ds, list(own)[first:], strict=True))
    with pytest.raises(ValueError, match="seed"):
        make(rank=2, world_size=3, seed=7).load_resharded_state_dict(states, 2, 3)


def test_endless_stream():
    ds = make(num_batches=None)
    it = iter(ds)
    for _ in range(8):
        next(it)
    assert ds.state_dict()["batch"] == 8
    ds.close()
    with pytest.raises(TypeError):
        len(ds)


def test_first_batch_gives_a_held_out_split_of_the_same_distribution():
    train = SyntheticCriteoDataset(8, table_sizes=100, num_batches=2, seed=3, rank=0, world_size=1)
    held_out = SyntheticCriteoDataset(
        8, table_sizes=100, num_batches=2, seed=3, rank=0, world_size=1, first_batch=1000
    )
    first_held_out = next(iter(held_out))
    assert torch.equal(first_held_out["dense"], train.make_batch(1000)[0]["dense"])
    assert not torch.equal(first_held_out["dense"], next(iter(train))["dense"])
    # Far-away indices are distinct batches too (no 32-bit wrap-around).
    assert not torch.equal(train.make_batch(2**40)[0]["dense"], train.make_batch(0)[0]["dense"])
    assert not torch.equal(train.make_batch(2**32)[0]["dense"], train.make_batch(0)[0]["dense"])
    train.close()
    held_out.close()
