"""BatchReader: every table's input from a KJT, with all ids checked in one pass."""

import re

import pytest
import torch

from recis.nn import EmbeddingBagConfig
from recis.nn.batch_inputs import BatchReader
from recis.sparse import KeyedJaggedTensor

TABLES = [
    EmbeddingBagConfig("t_small", 3, 4, ["s"]),
    EmbeddingBagConfig("t_pair", 50, 4, ["p1", "p2"]),
    EmbeddingBagConfig("t_big", 1000, 4, ["b"]),
]
ROWS = {"s": 3, "p1": 50, "p2": 50, "b": 1000, "extra": 7}


def batch(keys, batch_size=4, weighted=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 3, (len(keys), batch_size), generator=g)
    values = torch.cat(
        [
            torch.randint(0, ROWS[k], (int(n),), generator=g)
            for k, n in zip(keys, lengths.sum(1), strict=True)
        ]
    )
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor(keys, values, lengths.flatten(), weights)


def with_value(kjt, key, position, value):
    """``kjt`` with id ``position`` of feature ``key`` replaced by ``value``."""
    values = kjt.values().clone()
    values[kjt.offset_per_key()[kjt.index_of(key)] + position] = value
    return KeyedJaggedTensor(kjt.keys(), values, kjt.lengths(), kjt.weights_or_none())


@pytest.mark.parametrize(
    "keys",
    [
        ["s", "p1", "p2", "b"],  # table order
        ["b", "p2", "extra", "s", "p1"],  # shuffled, t_pair split, a key no table reads
    ],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_each_table_gets_its_features_in_config_order(keys, weighted):
    kjt = batch(keys, weighted=weighted)
    inputs = BatchReader(TABLES)(kjt)
    assert len(inputs) == len(TABLES)
    for cfg, (ids, lengths, weights) in zip(TABLES, inputs, strict=True):
        parts = [kjt[f] for f in cfg.feature_names]
        torch.testing.assert_close(ids, torch.cat([p.values() for p in parts]))
        torch.testing.assert_close(lengths, torch.cat([p.lengths() for p in parts]))
        if weighted:
            torch.testing.assert_close(weights, torch.cat([p.weights() for p in parts]))
        else:
            assert weights is None


@pytest.mark.parametrize(
    ("key", "value", "table", "rows"),
    [
        ("s", 3, "t_small", 3),  # first row past the end
        ("s", -1, "t_small", 3),
        ("p2", 50, "t_pair", 50),  # second feature of a two-feature table
        ("b", 5000, "t_big", 1000),
        ("b", -7, "t_big", 1000),
    ],
)
def test_out_of_range_id_names_feature_table_and_value(key, value, table, rows):
    kjt = batch(["b", "p2", "extra", "s", "p1"], batch_size=6)
    reader = BatchReader(TABLES)
    reader(kjt)  # the key order is cached; the check must still run
    bad = with_value(kjt, key, 1, value)
    message = f"feature '{key}' (table '{table}') has id {value} outside [0, {rows})"
    with pytest.raises(ValueError, match=re.escape(message)):
        reader(bad)


def test_first_bad_id_in_value_order_is_named():
    kjt = batch(["p1", "b", "s", "p2"], batch_size=6)
    bad = with_value(with_value(kjt, "b", 0, 1000), "p2", 0, 99)
    with pytest.raises(ValueError, match="feature 'b'"):
        BatchReader(TABLES)(bad)


def test_keys_no_table_reads_are_not_checked():
    kjt = batch(["s", "extra", "p1", "p2", "b"], batch_size=6)
    kjt = with_value(with_value(kjt, "extra", 0, -5), "extra", 1, 10**12)
    inputs = BatchReader(TABLES)(kjt)
    torch.testing.assert_close(inputs[2].ids, kjt["b"].values())


def test_missing_feature_names_the_table():
    kjt = batch(["s", "p1", "b"])
    with pytest.raises(ValueError, match=r"table 't_pair': feature\(s\) \['p2'\] are missing"):
        BatchReader(TABLES)(kjt)


def test_empty_batch_reads_empty_inputs():
    kjt = KeyedJaggedTensor(
        ["s", "p1", "p2", "b"], torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    )
    for ids, lengths, _ in BatchReader(TABLES)(kjt):
        assert ids.numel() == 0 and lengths.numel() == 0
