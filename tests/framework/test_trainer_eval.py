"""Trainer.evaluate: AUC / logloss / loss equal to a direct computation, across ranks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from recis.framework.metrics import BinaryClassificationMetric, clear_metrics, get_global_metrics
from recis.testing import run_distributed
from tests.framework.test_trainer import Recorder, ToyModel, build_trainer, make_batches


def pairwise_auc(preds: list[float], labels: list[float]) -> float:
    """AUC by comparing every positive with every negative (ties count one half)."""
    pos = [p for p, y in zip(preds, labels, strict=True) if y == 1]
    neg = [p for p, y in zip(preds, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def direct_logloss(preds: list[float], labels: list[float]) -> float:
    return -sum(
        y * math.log(p) + (1 - y) * math.log(1 - p) for p, y in zip(preds, labels, strict=True)
    ) / len(preds)


def test_binary_metric_matches_pairwise_auc_with_ties():
    g = torch.Generator().manual_seed(0)
    preds = torch.randint(1, 10, (200,), generator=g).float() / 10  # many ties
    labels = (torch.rand(200, generator=g) < 0.3).float()
    m = BinaryClassificationMetric()
    m.update(preds[:50], labels[:50])
    m.update(preds[50:], labels[50:])
    out = m.compute()
    assert out["count"] == 200
    assert math.isclose(out["auc"], pairwise_auc(preds.tolist(), labels.tolist()), rel_tol=1e-9)
    assert math.isclose(
        out["logloss"], direct_logloss(preds.tolist(), labels.tolist()), rel_tol=1e-6
    )


def _direct(model, batches) -> tuple[list[float], list[float], list[float]]:
    """Predictions, labels and per-batch losses, computed without the Trainer."""
    preds, labels, losses = [], [], []
    model.eval()
    with torch.no_grad():
        for b in batches:
            clear_metrics()
            losses.append(float(model(b)))
            p = get_global_metrics()["auc"]
            preds += p.preds.tolist()
            labels += p.labels.tolist()
    return preds, labels, losses


def _dist_evaluate(tmp: str) -> dict:
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = ToyModel()
    rec = Recorder()
    # Uneven eval sets: rank 0 has 4 batches, rank 1 has 3; evaluation covers all 7
    # (rank 1 runs a zero-sample batch while rank 0 evaluates its last one).
    eval_data = make_batches(4 if rank == 0 else 3, 6, 100 + rank)
    trainer = build_trainer(model, make_batches(2, 4, rank), tmp, hooks=[rec], eval_data=eval_data)
    trainer.train()
    assert model.training
    out = {"full": trainer.evaluate(), "two": trainer.evaluate(eval_steps=2)}
    out["training_after"] = model.training
    out["hook_calls"] = [c for c in rec.calls if "evaluate" in c[0]]
    model.eval()
    trainer.evaluate(eval_steps=1)
    out["eval_mode_kept"] = not model.training
    for key, n in (("direct_full", len(eval_data)), ("direct_two", 2)):
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, _direct(model, eval_data[:n]))
        out[key] = gathered
    return out


def _expected(gathered) -> dict:
    preds = [p for g in gathered for p in g[0]]
    labels = [y for g in gathered for y in g[1]]
    losses = [v for g in gathered for v in g[2]]
    return {
        "auc": pairwise_auc(preds, labels),
        "logloss": direct_logloss(preds, labels),
        "count": len(preds),
        "loss": sum(losses) / len(losses),
    }


def test_evaluate_two_ranks_matches_direct_computation(tmp_path):
    results = run_distributed(_dist_evaluate, 2, str(tmp_path), timeout=90)
    for r in results:
        for got, direct, count in (
            (r["full"], r["direct_full"], 42),
            (r["two"], r["direct_two"], 24),
        ):
            expected = _expected(direct)
            assert got.keys() == expected.keys()
            assert got["count"] == expected["count"] == count
            for key in ("auc", "logloss", "loss"):
                assert math.isclose(got[key], expected[key], rel_tol=1e-6), key
        assert r["training_after"] and r["eval_mode_kept"]
        assert r["hook_calls"] == [("before_evaluate",), ("after_evaluate",)] * 2
    assert results[0]["full"] == results[1]["full"]


def _dist_evaluate_without_data_on_one_rank(tmp: str) -> dict:
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = ToyModel()
    eval_data = make_batches(2, 6, 100) if rank == 0 else []
    trainer = build_trainer(model, make_batches(1, 4, rank), tmp, eval_data=eval_data)
    out = {"full": trainer.evaluate(), "direct": _direct(model, make_batches(2, 6, 100))}
    try:
        trainer.evaluate([])  # no rank has a batch
    except ValueError as e:
        out["empty"] = str(e)
    # train() finds an empty eval set before its first step, not at its first evaluation.
    trainer = build_trainer(ToyModel(), make_batches(3, 4, rank), tmp, eval_data=[])
    try:
        trainer.train()
    except ValueError as e:
        out["train"] = (str(e), trainer.state.global_step)
    return out


def test_a_rank_without_eval_data_runs_zero_sample_batches(tmp_path):
    # An eval set smaller than the ranks leaves some with nothing: they take part in
    # the others' batches with zero samples shaped like rank 0's first batch.
    results = run_distributed(_dist_evaluate_without_data_on_one_rank, 2, str(tmp_path), timeout=90)
    expected = _expected([results[0]["direct"]])
    for r in results:
        assert r["full"]["count"] == expected["count"] == 12
        for key in ("auc", "logloss", "loss"):
            assert math.isclose(r["full"][key], expected[key], rel_tol=1e-6), key
        assert r["empty"] == "the eval set is empty on all 2 ranks"
        assert r["train"] == (
            "the eval set is empty on all 2 ranks: there is nothing to evaluate",
            0,
        )


def test_a_long_evaluation_reports_its_progress(tmp_path, monkeypatch, caplog):
    from recis.framework import progress

    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)  # a line per batch
    trainer = build_trainer(ToyModel(), make_batches(1, 4, 0), str(tmp_path))
    with caplog.at_level("INFO", logger="recis.framework.progress"):
        trainer.evaluate(make_batches(3, 6, 100))
        trainer.evaluate(make_batches(3, 6, 100), eval_steps=2)
    lines = [r.getMessage().rsplit(" (", 1)[0] for r in caplog.records]
    assert lines == [
        *(f"evaluation at step 0: {k} batches evaluated" for k in (1, 2, 3)),
        *(f"evaluation at step 0: {k} of 2 batches evaluated" for k in (1, 2)),
    ]


def test_an_evaluation_logs_its_results_once_to_4_digits(tmp_path, caplog):
    trainer = build_trainer(ToyModel(), make_batches(1, 4, 0), str(tmp_path), log_steps=1)
    with caplog.at_level("INFO"):
        results = trainer.evaluate(make_batches(3, 6, 100))
    lines = [r.getMessage() for r in caplog.records if "evaluation at step" in r.getMessage()]
    assert len(lines) == 1, lines  # not again by the LoggerHook
    body = ", ".join(f"{k} {v:.4g}" for k, v in results.items())
    assert lines[0].startswith(f"evaluation at step 0: {body} (") and lines[0].endswith(" s)")
    assert ", count 18, " in lines[0]


def test_every_evaluation_starts_at_the_beginning_of_the_eval_set(tmp_path):
    # A dataset with a read position (CriteoDataset, SyntheticCriteoDataset) is put
    # back where it was: evaluating the first 2 batches twice sees the same 2 batches.
    from recis.io import SyntheticCriteoDataset

    torch.manual_seed(0)
    trainer = build_trainer(ToyModel(), make_batches(1, 4, 0), str(tmp_path))
    eval_set = SyntheticCriteoDataset(6, [30] * 13 + [20] * 13, num_batches=5, seed=1)
    first = trainer.evaluate(eval_set, eval_steps=2)
    assert trainer.evaluate(eval_set, eval_steps=2) == first
    whole = trainer.evaluate(eval_set)
    assert whole["count"] == 30 and trainer.evaluate(eval_set) == whole
    assert trainer.evaluate(eval_set, eval_steps=2) == first


def test_eval_every_steps_evaluates_during_training(tmp_path):
    rec = Recorder()
    trainer = build_trainer(
        ToyModel(),
        make_batches(5, 4, 0),
        str(tmp_path),
        hooks=[rec],
        eval_data=make_batches(2, 6, 100),
        eval_every_steps=2,
    )
    trainer.train()
    calls = [c[0] if c[0] != "before_step" else c for c in rec.calls]
    evaluations = [i for i, c in enumerate(calls) if c == "after_evaluate"]
    # After steps 2 and 4 (of 5), between that step and the next; in train mode again.
    assert [calls[i - 2 : i] for i in evaluations] == [["after_step", "before_evaluate"]] * 2
    assert calls[evaluations[0] + 1] == ("before_step", 2)
    assert calls[evaluations[1] + 1] == ("before_step", 4)
    assert trainer.last_evaluation[0] == 4 and trainer.model.training

    no_eval_set = build_trainer(ToyModel(), make_batches(1, 4, 0), str(tmp_path / "b"),
                                eval_every_steps=2)  # fmt: skip
    with pytest.raises(ValueError, match="eval_every_steps needs the Trainer's eval_dataset"):
        no_eval_set.train()
