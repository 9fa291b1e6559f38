import math

import pytest
import torch
import torch.distributed as dist

from recis.framework.metrics import (
    BinaryClassificationMetric,
    PredictionBuffer,
    Predictions,
    add_metric,
    binary_auc,
    binary_logloss,
    clear_metrics,
    get_global_metrics,
)
from recis.testing import run_distributed


def pairwise_auc(preds, labels):
    """Independent AUC: fraction of (positive, negative) pairs ranked right, ties = 1/2."""
    p = [float(x) for x in preds]
    y = [int(x) for x in labels]
    pos = [a for a, t in zip(p, y, strict=True) if t == 1]
    neg = [a for a, t in zip(p, y, strict=True) if t == 0]
    score = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return score / (len(pos) * len(neg))


def direct_logloss(preds, labels):
    total = 0.0
    for p, y in zip(preds.tolist(), labels.tolist(), strict=True):
        p = min(max(p, 1e-12), 1 - 1e-12)
        total -= y * math.log(p) + (1 - y) * math.log(1 - p)
    return total / len(preds)


def random_data(n, seed, levels=None):
    g = torch.Generator().manual_seed(seed)
    preds = torch.rand(n, generator=g)
    if levels:  # quantise to create many ties
        preds = torch.round(preds * levels) / levels
    labels = (torch.rand(n, generator=g) < 0.3 + 0.4 * preds).float()
    return preds, labels


@pytest.mark.parametrize("levels", [None, 5, 1])
def test_auc_and_logloss_match_direct_computation(levels):
    preds, labels = random_data(300, 1, levels)
    assert binary_auc(preds, labels) == pytest.approx(pairwise_auc(preds, labels), abs=1e-12)
    assert binary_logloss(preds, labels) == pytest.approx(direct_logloss(preds, labels), rel=1e-9)
    m = BinaryClassificationMetric()
    for chunk in range(3):
        m.update(preds[chunk * 100 : (chunk + 1) * 100], labels[chunk * 100 : (chunk + 1) * 100])
    out = m.compute()
    assert out["count"] == 300
    assert out["auc"] == pytest.approx(pairwise_auc(preds, labels), abs=1e-12)
    m.reset()
    assert m.compute()["count"] == 0


def test_auc_edge_cases():
    assert binary_auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0
    assert binary_auc(torch.tensor([0.9, 0.1]), torch.tensor([0, 1])) == 0.0
    assert binary_auc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == 0.5
    assert math.isnan(binary_auc(torch.tensor([0.1, 0.9]), torch.tensor([1, 1])))
    # A diverged model's NaN scores rank nothing (torch.unique sorts them last).
    nan = float("nan")
    assert math.isnan(binary_auc(torch.tensor([0.1, nan, 0.9]), torch.tensor([0, 0, 1])))
    with pytest.raises(ValueError, match="probabilities"):
        BinaryClassificationMetric().update(torch.tensor([1.5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="labels"):
        BinaryClassificationMetric().update(torch.tensor([0.5]), torch.tensor([2]))


def test_add_metric_replaces_scalars_and_concatenates_predictions():
    clear_metrics()
    add_metric("loss", torch.tensor(1.0))
    add_metric("loss", 2.0)
    add_metric("auc", Predictions(torch.tensor([0.1, 0.2]), torch.tensor([0.0, 1.0])))
    add_metric("auc", Predictions(torch.tensor([[0.3]]), torch.tensor([1.0])))
    got = get_global_metrics()
    assert got["loss"] == 2.0
    assert isinstance(got["auc"], Predictions)
    assert torch.equal(got["auc"].preds, torch.tensor([0.1, 0.2, 0.3]))
    assert torch.equal(got["auc"].labels, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="labels"):
        add_metric("auc", Predictions(torch.tensor([0.1, 0.2]), torch.tensor([1.0])))
    clear_metrics()
    assert get_global_metrics() == {}


def _distributed_metric():
    rank = dist.get_rank()
    # Uneven sizes per rank, with ties spanning ranks.
    preds, labels = random_data(150 + 37 * rank, 10 + rank, levels=7)
    m = BinaryClassificationMetric()
    m.update(preds, labels)
    empty = BinaryClassificationMetric().compute()
    only_rank0 = BinaryClassificationMetric()
    if rank == 0:
        only_rank0.update(torch.tensor([0.2, 0.7]), torch.tensor([0, 1]))
    # Plain lists: tensors sent back from a rank that has exited cannot be rebuilt.
    return m.compute(), preds.tolist(), labels.tolist(), empty, only_rank0.compute()


def test_a_prediction_buffer_holds_every_batch_in_a_few_allocations():
    # One tensor kept per step pins the heap between steps' activations (see the class).
    torch.manual_seed(0)
    sizes = [0, 1, 7, 1024, 0, 3] + [int(n) for n in torch.randint(0, 2000, (994,))]
    batches = [(torch.rand(n, 1), (torch.rand(n) < 0.3).double()) for n in sizes]
    buffer = PredictionBuffer()
    storages = set()
    for preds, labels in batches:
        buffer.append(preds, labels)
        storages.add(buffer.tensors()[0].untyped_storage().data_ptr())
    preds, labels = buffer.tensors()
    assert len(buffer) == sum(sizes) and preds.dtype == labels.dtype == torch.float32
    assert torch.equal(preds, torch.cat([p.reshape(-1) for p, _ in batches]))
    assert torch.equal(labels, torch.cat([y.float() for _, y in batches]))
    assert len(storages) <= 2 + math.ceil(math.log2(sum(sizes)))  # doubling
    buffer.clear()
    assert len(buffer) == 0 and buffer.tensors()[0].numel() == 0
    buffer.append(torch.tensor([0.5]), torch.tensor([1.0]))
    assert buffer.tensors()[0].tolist() == [0.5]
    assert buffer.tensors()[0].untyped_storage().data_ptr() in storages  # reused, not new
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        buffer.append(torch.rand(2), torch.ones(1))


def test_metric_across_two_ranks_equals_gathered_computation():
    results = run_distributed(_distributed_metric, 2)
    preds = torch.tensor([p for r in results for p in r[1]])
    labels = torch.tensor([y for r in results for y in r[2]])
    for out, _, _, empty, only_rank0 in results:
        assert empty["count"] == 0 and math.isnan(empty["auc"])
        assert only_rank0["count"] == 2 and only_rank0["auc"] == 1.0
        assert out["count"] == preds.numel()
        assert out["auc"] == pytest.approx(pairwise_auc(preds, labels), abs=1e-12)
        assert out["logloss"] == pytest.approx(direct_logloss(preds, labels), rel=1e-9)
