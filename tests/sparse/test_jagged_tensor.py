import pytest
import torch

from recis.sparse import JaggedTensor, KeyedJaggedTensor


def make_kjt(weighted=False):
    # user: [1, 2], [3]   item: [], [7, 8]
    return KeyedJaggedTensor(
        keys=["user", "item"],
        values=torch.tensor([1, 2, 3, 7, 8]),
        lengths=torch.tensor([2, 1, 0, 2]),
        weights=torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0]) if weighted else None,
    )


def test_kjt_exposes_its_parts_key_major():
    kjt = make_kjt()
    assert kjt.keys() == ["user", "item"]
    assert kjt.stride() == 2
    assert kjt.offsets().tolist() == [0, 2, 3, 3, 5]
    assert kjt.length_per_key() == [3, 2]
    assert kjt.offset_per_key() == [0, 3, 5]
    assert kjt.weights_or_none() is None


def test_indexing_by_key_gives_that_features_bags():
    kjt = make_kjt(weighted=True)
    item = kjt["item"]
    assert item.values().tolist() == [7, 8]
    assert item.lengths().tolist() == [0, 2]
    assert item.weights().tolist() == [3.0, 4.0]
    assert [t.tolist() for t in item.to_dense()] == [[], [7, 8]]


def test_select_reorders_keys():
    kjt = make_kjt(weighted=True).select(["item", "user"])
    assert kjt.keys() == ["item", "user"]
    assert kjt.values().tolist() == [7, 8, 1, 2, 3]
    assert kjt.lengths().tolist() == [0, 2, 2, 1]
    assert kjt.weights().tolist() == [3.0, 4.0, 0.5, 1.0, 2.0]


def test_to_moves_every_tensor():
    kjt = make_kjt(weighted=True).to("meta")
    assert {t.device.type for t in (kjt.values(), kjt.lengths(), kjt.weights())} == {"meta"}
    assert kjt.stride() == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1, 1, 0])),
            "sum to 3 but there are 2",
        ),
        (dict(values=torch.tensor([1, 2]), lengths=torch.tensor([3, -1, 0, 0])), "non-negative"),
        (
            dict(values=torch.tensor([1.0, 2.0]), lengths=torch.tensor([1, 1, 0, 0])),
            "int32 or int64",
        ),
        (
            dict(values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1, 0])),
            "len\\(keys\\) \\* batch_size",
        ),
        (
            dict(
                values=torch.tensor([1, 2]),
                lengths=torch.tensor([1, 1, 0, 0]),
                weights=torch.tensor([1.0]),
            ),
            "one entry per value",
        ),
        (
            dict(
                values=torch.tensor([1, 2]),
                lengths=torch.tensor([1, 1, 0, 0]),
                weights=torch.tensor([1, 2]),
            ),
            "floating-point",
        ),
        (dict(values=torch.tensor([[1, 2]]), lengths=torch.tensor([1, 1, 0, 0])), "1-D"),
    ],
)
def test_invalid_kjt_raises_value_error_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KeyedJaggedTensor(keys=["a", "b"], **kwargs)


def test_duplicate_keys_and_unknown_key_are_errors():
    with pytest.raises(ValueError, match="unique"):
        KeyedJaggedTensor(["a", "a"], torch.tensor([1]), torch.tensor([1, 0]))
    with pytest.raises(KeyError, match="'nope'"):
        make_kjt()["nope"]


def test_jagged_tensor_validates_too():
    with pytest.raises(ValueError, match="sum to 1"):
        JaggedTensor(torch.tensor([1, 2]), torch.tensor([1]))


def test_int32_kjt_is_accepted():
    kjt = KeyedJaggedTensor(
        ["a"], torch.tensor([1, 2], dtype=torch.int32), torch.tensor([2], dtype=torch.int32)
    )
    assert kjt.offsets().tolist() == [0, 2]


def test_torchrec_round_trip():
    pytest.importorskip("torchrec")
    kjt = make_kjt(weighted=True)
    theirs = kjt.to_torchrec()
    assert theirs.keys() == kjt.keys()
    assert torch.equal(theirs["item"].values(), kjt["item"].values())
    back = KeyedJaggedTensor.from_torchrec(theirs)
    assert back.keys() == kjt.keys()
    assert torch.equal(back.values(), kjt.values())
    assert torch.equal(back.lengths(), kjt.lengths())
    assert torch.equal(back.weights(), kjt.weights())
    assert back.stride() == 2
