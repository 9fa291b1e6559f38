"""EvalMetrics and the zero-sample batch of a rank whose eval data ended."""

import pytest
import torch

from recis.framework.evaluation import EvalMetrics, eval_batches, without_samples
from recis.framework.metrics import Predictions
from recis.sparse import KeyedJaggedTensor


def test_without_samples_cuts_every_part_of_a_batch_to_zero_samples():
    kjt = KeyedJaggedTensor(["a", "b"], torch.arange(5), torch.tensor([2, 1, 0, 2]), torch.ones(5))
    batch = {"dense": torch.ones(2, 3), "sparse": kjt, "label": torch.ones(2), "tag": "x"}
    empty = without_samples(batch)
    assert empty["dense"].shape == (0, 3) and empty["label"].shape == (0,)
    assert empty["sparse"].keys() == ["a", "b"] and empty["sparse"].stride() == 0
    assert empty["sparse"].weights().numel() == 0
    assert empty["tag"] == "x"


def test_uncounted_batches_register_names_but_add_nothing():
    m = EvalMetrics()
    m.add({"loss": 0.5, "auc": Predictions(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0]))})
    m.add({"loss": float("nan"), "auc": Predictions(torch.zeros(0), torch.zeros(0))}, count=False)
    m.add({"other": 1.0}, count=False)
    out = m.reduce(world_size=1, device=torch.device("cpu"))
    assert out["loss"] == 0.5 and out["auc"] == 1.0 and out["count"] == 2
    assert "other" in m.sums and m.counts["other"] == 0


def test_nothing_reported_reduces_to_nothing():
    assert EvalMetrics().reduce(world_size=1, device=torch.device("cpu")) == {}


def test_a_rank_without_eval_batches_raises():
    assert list(eval_batches([1, 2], rank=1, world_size=2)) == [1, 2]
    with pytest.raises(ValueError, match=r"rank 1 has no evaluation data .*; with 2 ranks"):
        list(eval_batches([], rank=1, world_size=2))
    # One rank could go on, but would print an evaluation of nothing.
    with pytest.raises(ValueError, match=r"rank 0 has no evaluation data \(an empty eval set\?\)$"):
        list(eval_batches([], rank=0, world_size=1))
