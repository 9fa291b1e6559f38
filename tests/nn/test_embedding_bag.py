import pytest
import torch
import torch.nn.functional as F

from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig, filter_out_sparse_param
from recis.ops import reference
from recis.sparse import KeyedJaggedTensor


def tables(item_pooling="mean"):
    return [
        EmbeddingBagConfig("t_user", 40, 8, ["user"]),
        EmbeddingBagConfig("t_item", 30, 5, ["item", "item_hist"], pooling=item_pooling),
    ]


FEATURES = ["user", "item", "item_hist"]


def random_kjt(batch=6, weighted=False, rows=(40, 30, 30), max_len=4):
    lengths = torch.randint(0, max_len + 1, (len(FEATURES), batch))
    lengths[:, 0] = 0  # an empty bag in every feature
    values = torch.cat(
        [torch.randint(0, r, (int(n),)) for r, n in zip(rows, lengths.sum(1), strict=True)]
    )
    values[: min(3, values.numel())] = 1  # duplicate ids
    weights = torch.rand(values.numel()) if weighted else None
    return KeyedJaggedTensor(FEATURES, values, lengths.flatten(), weights)


def expected_pooled(ebc, kjt):
    """Each feature through torch.nn.functional.embedding_bag on the table's weight."""
    out = {}
    for cfg in ebc.embedding_bag_configs():
        for f in cfg.feature_names:
            jt = kjt[f]
            out[f] = F.embedding_bag(
                jt.values(),
                ebc.tables[cfg.name].weight,
                jt.offsets()[:-1],
                mode=cfg.pooling,
                per_sample_weights=jt.weights_or_none(),
            )
    return out


@pytest.mark.parametrize("weighted", [False, True])
def test_forward_equals_embedding_bag_per_feature(weighted):
    # torch's embedding_bag takes per-sample weights with sum pooling only
    ebc = EmbeddingBagCollection(tables("sum" if weighted else "mean"))
    kjt = random_kjt(weighted=weighted)
    kt = ebc(kjt)
    assert kt.keys() == FEATURES
    assert kt.values().shape == (6, 8 + 5 + 5)
    for f, want in expected_pooled(ebc, kjt).items():
        torch.testing.assert_close(kt[f], want)


def test_weighted_mean_pooling_matches_reference():
    ebc = EmbeddingBagCollection(tables())
    kjt = random_kjt(weighted=True)
    jt = kjt["item_hist"]
    want = reference.pooled_lookup(
        ebc.tables["t_item"].weight, jt.values(), jt.offsets(), jt.weights(), 1
    )
    torch.testing.assert_close(ebc(kjt)["item_hist"], want)


def test_weights_are_not_parameters_but_sparse_params():
    ebc = EmbeddingBagCollection(tables())
    assert list(ebc.parameters()) == []
    sparse = filter_out_sparse_param(torch.nn.Sequential(ebc, torch.nn.Linear(3, 3)))
    assert list(sparse) == ["t_user", "t_item"]
    assert sparse["t_item"].weight.shape == (30, 5)


@pytest.mark.parametrize("weighted", [False, True])
def test_backward_records_the_gradient_autograd_gives_the_reference(weighted):
    ebc = EmbeddingBagCollection(tables())
    kjt = random_kjt(weighted=weighted)
    upstream = torch.randn(6, 18)
    (ebc(kjt).values() * upstream).sum().backward()
    # Micro-batches accumulate: a second backward adds to the first.
    kjt2 = random_kjt(weighted=weighted)
    (ebc(kjt2).values() * upstream).sum().backward()

    for cfg in ebc.embedding_bag_configs():
        leaf = ebc.tables[cfg.name].weight.clone().requires_grad_(True)
        loss = 0
        for batch in (kjt, kjt2):
            for f in cfg.feature_names:
                jt = batch[f]
                pooled = F.embedding_bag(
                    jt.values(),
                    leaf,
                    jt.offsets()[:-1],
                    mode="sum",
                    per_sample_weights=jt.weights_or_none(),
                )
                if cfg.pooling == "mean":
                    pooled = pooled / jt.lengths().clamp(min=1).unsqueeze(1)
                start = ebc(batch).offset_per_key()[FEATURES.index(f)]
                loss = loss + (pooled * upstream[:, start : start + cfg.embedding_dim]).sum()
        loss.backward()
        g = ebc.tables[cfg.name].sparse_grad()
        recorded = reference.bag_row_grads(
            g.ids,
            g.offsets,
            g.per_sample_weights,
            1 if g.mean else 0,
            g.grad_out,
            cfg.num_embeddings,
        )
        torch.testing.assert_close(recorded, leaf.grad)


def test_zero_grad_clears_and_no_grad_records_nothing():
    ebc = EmbeddingBagCollection(tables())
    ebc(random_kjt()).values().sum().backward()
    table = ebc.tables["t_user"]
    assert table.sparse_grad() is not None
    table.zero_grad()
    assert table.sparse_grad() is None
    with torch.no_grad():
        out = ebc(random_kjt()).values()
    assert not out.requires_grad


def test_out_of_range_id_names_the_feature():
    ebc = EmbeddingBagCollection(tables())
    kjt = KeyedJaggedTensor(FEATURES, torch.tensor([1, 2, 30]), torch.tensor([1, 0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="feature 'item_hist' \\(table 't_item'\\) has id 30"):
        ebc(kjt)
    kjt = KeyedJaggedTensor(FEATURES, torch.tensor([-3, 2, 3]), torch.tensor([1, 0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match=r"feature .user.*id -3"):
        ebc(kjt)


def test_keys_no_table_reads_may_hold_any_id():
    ebc = EmbeddingBagCollection(tables())
    kjt = KeyedJaggedTensor(
        [*FEATURES, "unused"], torch.tensor([1, 2, 3, -5, 10**12]), torch.tensor([1, 1, 1, 2])
    )
    assert ebc(kjt).values().shape == (1, 18)


def test_missing_feature_is_named():
    ebc = EmbeddingBagCollection(tables())
    kjt = KeyedJaggedTensor(["user", "item"], torch.tensor([1, 2]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="\\['item_hist'\\] are missing from the batch"):
        ebc(kjt)


def test_meta_device_builds_without_memory():
    ebc = EmbeddingBagCollection([EmbeddingBagConfig("huge", 10**9, 128, ["f"])], device="meta")
    assert ebc.tables["huge"].weight.is_meta


def test_init_fn_is_used():
    cfg = EmbeddingBagConfig("t", 5, 2, ["f"], init_fn=lambda w: torch.nn.init.constant_(w, 0.5))
    ebc = EmbeddingBagCollection([cfg])
    assert torch.equal(ebc.tables["t"].weight, torch.full((5, 2), 0.5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_embeddings=0), "num_embeddings must be > 0"),
        (dict(embedding_dim=-1), "embedding_dim must be > 0"),
        (dict(feature_names=[]), "at least one feature"),
        (dict(pooling="max"), "pooling must be one of"),
    ],
)
def test_config_validation_names_the_table(kwargs, message):
    args = dict(name="t_bad", num_embeddings=4, embedding_dim=2, feature_names=["f"]) | kwargs
    with pytest.raises(ValueError, match=f"t_bad.*{message}|{message}"):
        EmbeddingBagConfig(**args)


def test_duplicate_features_or_tables_are_rejected():
    with pytest.raises(ValueError, match="only one table"):
        EmbeddingBagCollection(
            [EmbeddingBagConfig("a", 2, 2, ["f"]), EmbeddingBagConfig("b", 2, 2, ["f"])]
        )
    with pytest.raises(ValueError, match="unique"):
        EmbeddingBagCollection(
            [EmbeddingBagConfig("a", 2, 2, ["f"]), EmbeddingBagConfig("a", 2, 2, ["g"])]
        )


def test_equals_torchrec_embedding_bag_collection():
    torchrec = pytest.importorskip("torchrec")
    theirs_cfg = [
        torchrec.EmbeddingBagConfig(
            name="t_user", num_embeddings=40, embedding_dim=8, feature_names=["user"]
        ),
        torchrec.EmbeddingBagConfig(
            name="t_item",
            num_embeddings=30,
            embedding_dim=5,
            feature_names=["item", "item_hist"],
            pooling=torchrec.PoolingType.MEAN,
        ),
    ]
    theirs = torchrec.EmbeddingBagCollection(tables=theirs_cfg)
    ours = EmbeddingBagCollection([EmbeddingBagConfig.from_torchrec(c) for c in theirs_cfg])
    assert [c.pooling for c in ours.embedding_bag_configs()] == ["sum", "mean"]
    with torch.no_grad():
        for name, table in ours.tables.items():
            table.weight.copy_(theirs.embedding_bags[name].weight)
    kjt = random_kjt()
    want = theirs(kjt.to_torchrec())
    got = ours(kjt)
    assert got.keys() == want.keys()
    torch.testing.assert_close(got.values(), want.values())
