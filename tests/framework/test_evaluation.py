"""EvalMetrics, the zero-sample batch of a rank whose eval data ended, and the
evaluation loop on one rank (several: tests/framework/test_trainer_eval.py)."""

import pytest
import torch

from recis.framework.evaluation import (
    EvalMetrics,
    check_eval_set_not_empty,
    run_eval_batches,
    without_samples,
)
from recis.framework.metrics import Predictions
from recis.framework.rank_sync import RankSync, deferred_iter
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


def evaluate_one_rank(batches: list, steps: int | None = None) -> tuple[int, EvalMetrics]:
    metrics = EvalMetrics()
    done, stopped = run_eval_batches(
        deferred_iter(batches),
        RankSync(0, 1, torch.device("cpu")),
        lambda b: {"loss": b},
        metrics,
        steps,
        step=7,
        stop=lambda: False,
    )
    assert not stopped
    return done, metrics


def test_one_rank_runs_every_batch_or_eval_steps():
    done, metrics = evaluate_one_rank([1.0, 2.0, 6.0])
    assert done == 3 and metrics.reduce(1, torch.device("cpu")) == {"loss": 3.0}
    done, metrics = evaluate_one_rank([1.0, 2.0, 6.0], steps=2)
    assert done == 2 and metrics.reduce(1, torch.device("cpu")) == {"loss": 1.5}


def test_an_empty_eval_set_raises_rather_than_report_nothing():
    with pytest.raises(ValueError, match=r"^the eval set is empty$"):
        evaluate_one_rank([])


def test_the_check_for_an_empty_eval_set_reads_a_batch_and_puts_it_back():
    from recis.io import SyntheticCriteoDataset

    def eval_set():
        return SyntheticCriteoDataset(6, [30] * 13 + [20] * 13, num_batches=5, seed=1)

    checked, fresh = eval_set(), eval_set()
    check_eval_set_not_empty(checked, RankSync(0, 1, torch.device("cpu")), step=0)
    assert torch.equal(next(iter(checked))["dense"], next(iter(fresh))["dense"])
    with pytest.raises(ValueError, match=r"^the eval set is empty: there is nothing to evaluate$"):
        check_eval_set_not_empty([], RankSync(0, 1, torch.device("cpu")), step=0)


def test_deferred_iter_opens_the_dataset_at_the_first_batch_and_closes_it():
    events = []

    class Dataset:
        def __iter__(self):
            events.append("iter")
            try:
                yield 1
                yield 2
            finally:
                events.append("closed")

    it = deferred_iter(Dataset())
    assert events == []
    assert next(it) == 1 and events == ["iter"]
    it.close()
    assert events == ["iter", "closed"]
