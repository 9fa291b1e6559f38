import pytest
import torch

from recis.sparse import KeyedTensor


def test_keyed_tensor_slices_by_feature():
    values = torch.arange(20.0).view(4, 5)
    kt = KeyedTensor(["a", "b"], [2, 3], values)
    assert torch.equal(kt["a"], values[:, :2])
    assert torch.equal(kt["b"], values[:, 2:])
    assert kt.offset_per_key() == [0, 2, 5]
    assert list(kt.to_dict()) == ["a", "b"]


def test_keyed_tensor_validates_its_shape():
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        KeyedTensor(["a", "b"], [2, 3], torch.zeros(4, 4))
    with pytest.raises(KeyError, match="'c'"):
        KeyedTensor(["a"], [1], torch.zeros(1, 1))["c"]


def test_keyed_tensor_torchrec_round_trip():
    pytest.importorskip("torchrec")
    kt = KeyedTensor.from_tensor_list(["a", "b"], [torch.ones(3, 2), torch.zeros(3, 4)])
    back = KeyedTensor.from_torchrec(kt.to_torchrec())
    assert back.keys() == ["a", "b"]
    assert torch.equal(back.values(), kt.values())
