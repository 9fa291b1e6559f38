"""Trainer: step counting, hook order, _train_step override, gradient accumulation, DDP.

The toy model, data and sparse optimizer here are shared by the other trainer and
hook tests. Sparse updates use a test-local SGD computed from each table's
SparseGrad with the pure-torch reference ``bag_row_grads`` (the Trainer's tests do
not lean on recis.optim's kernels, which have their own); across ranks it averages the gradient (what DMP's data-parallel
tables do), so replicated tables stay identical.
"""

from __future__ import annotations

import io
import os
import platform

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recis.framework.checkpoint_manager import CheckpointError
from recis.framework.metrics import Predictions, add_metric
from recis.framework.trainer import Trainer, TrainingArguments
from recis.hooks import Hook, LoggerHook
from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig, filter_out_sparse_param
from recis.ops import MEAN, SUM
from recis.ops.reference import bag_row_grads
from recis.sparse import KeyedJaggedTensor
from recis.testing import run_distributed
from tests.ops.helpers import step_buffers

FEATURES = [f"C{i}" for i in range(1, 27)]
N_DENSE = 13
TABLES = [
    EmbeddingBagConfig("t_a", 30, 4, FEATURES[:13]),
    EmbeddingBagConfig("t_b", 20, 4, FEATURES[13:], pooling="mean"),
]
ROWS = {f: cfg.num_embeddings for cfg in TABLES for f in cfg.feature_names}


def make_batches(num_batches: int, batch_size: int, seed: int) -> list[dict]:
    """Batches in the recis format: dense [B, 13], 26 sparse features, label [B]."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        lengths = torch.randint(0, 3, (len(FEATURES), batch_size), generator=g)
        values = [
            torch.randint(0, ROWS[f], (int(lengths[i].sum()),), generator=g)
            for i, f in enumerate(FEATURES)
        ]
        batches.append(
            {
                "dense": torch.randn(batch_size, N_DENSE, generator=g),
                "sparse": KeyedJaggedTensor(FEATURES, torch.cat(values), lengths.reshape(-1)),
                "label": (torch.rand(batch_size, generator=g) < 0.4).float(),
            }
        )
    return batches


def concat_batches(batches: list[dict]) -> dict:
    """One batch holding the samples of ``batches`` in order."""
    values, lengths = [], []
    for f in FEATURES:
        parts = [b["sparse"][f] for b in batches]
        values.extend(p.values() for p in parts)
        lengths.extend(p.lengths() for p in parts)
    return {
        "dense": torch.cat([b["dense"] for b in batches]),
        "sparse": KeyedJaggedTensor(FEATURES, torch.cat(values), torch.cat(lengths)),
        "label": torch.cat([b["label"] for b in batches]),
    }


class ToyModel(nn.Module):
    """EBC + MLP returning the mean BCE loss and reporting loss and predictions."""

    def __init__(self) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(TABLES)
        self.mlp = nn.Sequential(
            nn.Linear(N_DENSE + 4 * len(FEATURES), 8), nn.ReLU(), nn.Linear(8, 1)
        )

    def forward(self, batch: dict) -> torch.Tensor:
        emb = self.ebc(batch["sparse"]).values()
        logits = self.mlp(torch.cat([batch["dense"], emb], dim=1)).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
        add_metric("loss", loss.detach())
        add_metric("auc", Predictions(torch.sigmoid(logits).detach(), batch["label"]))
        return loss


class ToySparseSGD:
    """Plain SGD on the touched rows from each table's SparseGrad (test-local)."""

    def __init__(self, tables: dict, lr: float) -> None:
        self.tables, self.lr, self.steps = tables, lr, 0

    def zero_grad(self) -> None:
        for t in self.tables.values():
            t.zero_grad()

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        for t in self.tables.values():
            g = t.sparse_grad()
            grad = torch.zeros_like(t.weight)
            if g is not None:
                pooling = MEAN if g.mean else SUM
                grad = bag_row_grads(
                    g.ids, g.offsets, g.per_sample_weights, pooling, g.grad_out, t.weight.shape[0]
                )
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(grad)
                grad /= dist.get_world_size()
            t.weight -= self.lr * grad

    # Plain SGD keeps no state; the checkpoint Saver asks for it per table.
    def table_state(self, name: str) -> dict:
        return {}

    def set_table_state(self, name: str, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Recorder(Hook):
    """Records every hook call with its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def before_train(self):
        self.calls.append(("before_train",))

    def after_train(self):
        self.calls.append(("after_train",))

    def before_epoch(self, epoch):
        self.calls.append(("before_epoch", epoch))

    def after_epoch(self, epoch):
        self.calls.append(("after_epoch", epoch))

    def before_step(self, global_step):
        self.calls.append(("before_step", global_step))

    def after_step(self, metrics, global_step):
        self.calls.append(("after_step", global_step))
        self.last_metrics = metrics

    def before_evaluate(self):
        self.calls.append(("before_evaluate",))

    def after_evaluate(self, metrics):
        self.calls.append(("after_evaluate",))

    def end(self):
        self.calls.append(("end",))


def build_trainer(
    model: nn.Module,
    data,
    tmp: str,
    trainer_cls: type[Trainer] = Trainer,
    hooks=None,
    lr: float = 0.1,
    eval_data=None,
    **args,
) -> Trainer:
    """A Trainer with SGD on both sides and a counter of dense optimizer steps."""
    dense = torch.optim.SGD(model.parameters(), lr=lr)
    dense.steps = 0

    def count(opt, *_):
        opt.steps += 1

    dense.register_step_post_hook(count)
    sparse = ToySparseSGD(filter_out_sparse_param(model), lr=lr)
    args.setdefault("log_steps", None)
    return trainer_cls(
        model,
        TrainingArguments(output_dir=tmp, **args),
        train_dataset=data,
        eval_dataset=eval_data,
        hooks=hooks,
        dense_optimizers=(dense, None),
        sparse_optimizer=sparse,
    )


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Dense parameters and embedding tables, by name, unwrapped from DDP."""
    model = getattr(model, "module", model)
    out = {n: p.detach().clone() for n, p in model.named_parameters()}
    out.update({n: t.weight.clone() for n, t in filter_out_sparse_param(model).items()})
    return out


def assert_same(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-5, msg=name)


def test_train_steps_exact_hooks_in_order(tmp_path):
    rec = Recorder()
    trainer = build_trainer(
        ToyModel(), make_batches(5, 4, 0), str(tmp_path), hooks=[rec], train_steps=7
    )
    state = trainer.train()
    # 5 steps in epoch 0, then epoch 1 stops after 2 more: exactly train_steps.
    assert state.global_step == 7 and state.epoch == 1
    assert trainer.dense_optimizer.steps == 7 and trainer.sparse_optimizer.steps == 7
    expected = [("before_train",), ("before_epoch", 0)]
    expected += [c for s in range(5) for c in (("before_step", s), ("after_step", s + 1))]
    expected += [("after_epoch", 0), ("before_epoch", 1)]
    expected += [c for s in range(5, 7) for c in (("before_step", s), ("after_step", s + 1))]
    expected += [("after_epoch", 1), ("after_train",), ("end",)]
    assert rec.calls == expected
    assert set(rec.last_metrics) == {"loss", "auc"}
    assert isinstance(rec.last_metrics["auc"], Predictions)
    rec.calls.clear()
    trainer.evaluate(make_batches(2, 4, 1))
    assert rec.calls == [("before_evaluate",), ("after_evaluate",)]


def test_train_epoch_drops_partial_window_and_trains(tmp_path):
    model = ToyModel()
    before = weights(model)
    data = make_batches(5, 4, 0)
    trainer = build_trainer(
        model, data, str(tmp_path), train_epoch=2, gradient_accumulation_steps=2
    )
    assert trainer.total_steps == 4
    state = trainer.train()
    # 5 batches make 2 full windows of k=2 per epoch; the fifth is dropped.
    assert (state.global_step, state.epoch) == (4, 2)
    assert trainer.dense_optimizer.steps == 4 and trainer.sparse_optimizer.steps == 4
    after = weights(model)
    assert all(not torch.equal(before[n], after[n]) for n in before)


def test_train_step_override_is_used(tmp_path):
    class Counting(Trainer):
        calls = 0

        def _train_step(self, data, epoch, metrics):
            type(self).calls += 1
            metrics["epoch_seen"] = epoch
            return super()._train_step(data, epoch, metrics)

    rec = Recorder()
    trainer = build_trainer(
        ToyModel(),
        make_batches(6, 4, 0),
        str(tmp_path),
        trainer_cls=Counting,
        hooks=[rec],
        train_steps=3,
        gradient_accumulation_steps=2,
    )
    trainer.train()
    assert Counting.calls == 6 and trainer.dense_optimizer.steps == 3
    assert rec.last_metrics["epoch_seen"] == 0


def run_pair(model_factory, micro: list[dict], k: int, steps: int, tmp: str) -> tuple[dict, dict]:
    """Weights after training on micro-batches with accumulation k vs on their k-concatenations."""
    torch.manual_seed(1)
    a = model_factory()
    torch.manual_seed(1)
    b = model_factory()
    assert_same(weights(a), weights(b))
    merged = [concat_batches(micro[i : i + k]) for i in range(0, len(micro), k)]
    # Separate output dirs: the second job must not resume the first one's checkpoint.
    ta = build_trainer(
        a, micro, os.path.join(tmp, "micro"), train_steps=steps, gradient_accumulation_steps=k
    )
    tb = build_trainer(b, merged, os.path.join(tmp, "merged"), train_steps=steps)
    ta.train()
    tb.train()
    assert ta.dense_optimizer.steps == tb.dense_optimizer.steps == steps
    assert ta.sparse_optimizer.steps == steps
    return weights(a), weights(b)


def test_gradient_accumulation_equals_big_batch(tmp_path):
    accumulated, big = run_pair(ToyModel, make_batches(9, 2, 3), k=3, steps=3, tmp=str(tmp_path))
    assert_same(accumulated, big)


class CountingDDP(DistributedDataParallel):
    """DDP that counts how often no_sync() was entered."""

    no_sync_calls = 0

    def no_sync(self):
        CountingDDP.no_sync_calls += 1
        return super().no_sync()


def _ddp_model() -> nn.Module:
    return CountingDDP(ToyModel(), broadcast_buffers=False)


class DDPInside(nn.Module):
    """A wrapper holding a DDP without a no_sync() of its own (as DMP holds its dense part)."""

    def __init__(self) -> None:
        super().__init__()
        self.module = _ddp_model()

    def forward(self, batch):
        return self.module(batch)


def _dist_accumulation_and_uneven(tmp: str) -> dict:
    rank = dist.get_rank()
    out = {}
    # Gradient accumulation under DDP: k=2 micro-batches of 3 == one batch of 6.
    accumulated, big = run_pair(_ddp_model, make_batches(6, 3, 10 + rank), k=2, steps=3, tmp=tmp)
    assert_same(accumulated, big)
    out["no_sync_calls"] = CountingDDP.no_sync_calls
    inner, inner_big = run_pair(
        DDPInside, make_batches(6, 3, 10 + rank), k=2, steps=3, tmp=os.path.join(tmp, "inside")
    )
    assert_same(inner, inner_big)
    out["no_sync_calls_inside"] = CountingDDP.no_sync_calls - out["no_sync_calls"]
    # Every rank holds the same weights (DDP for dense, averaged sparse grads).
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, accumulated)
    assert_same(gathered[0], gathered[1])
    # Uneven data: rank 0 has 5 batches, rank 1 only 3; both stop after 3 steps.
    # Only rank 0 prints; a LoggerHook on rank 0 alone must not block the others.
    rec, log = Recorder(), io.StringIO()
    trainer = build_trainer(
        _ddp_model(),
        make_batches(5 if rank == 0 else 3, 4, rank),
        os.path.join(tmp, "uneven"),
        hooks=[rec, LoggerHook(log_steps=1, stream=log)] if rank == 0 else [rec],
        train_epoch=1,
    )
    state = trainer.train()
    out["uneven"] = (state.global_step, trainer.dense_optimizer.steps, rec.calls[-3:])
    out["log_lines"] = log.getvalue().splitlines()
    # No data at all on rank 1: every rank raises, none waits for the others.
    empty = build_trainer(
        _ddp_model(), make_batches(2, 4, rank) if rank == 0 else [], os.path.join(tmp, "empty")
    )
    with pytest.raises(ValueError) as raised:
        empty.train()
    assert str(raised.value).startswith(
        "train_dataset gave not one training step in epoch 0: the data of rank 1 of 2 ended "
        "before 1 batch (one step with gradient_accumulation_steps)"
    )
    return out


def test_two_ranks_accumulation_ddp_and_uneven_data(tmp_path):
    results = run_distributed(_dist_accumulation_and_uneven, 2, str(tmp_path), timeout=90)
    for r in results:
        # 3 steps x (k-1) micro-batches under no_sync; the big-batch run never uses it.
        assert r["no_sync_calls"] == 3
        assert r["no_sync_calls_inside"] == 3  # found inside the wrapper
        assert r["uneven"] == (3, 3, [("after_epoch", 0), ("after_train",), ("end",)])
    lines = results[0]["log_lines"]
    # Rank 0 estimates the total from its own 5 batches; training stops at 3.
    assert [line.split(" [")[0] for line in lines] == ["step 1/5", "step 2/5", "step 3/5"]
    assert all(" loss " in line for line in lines) and results[1]["log_lines"] == []


class ScalarModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))

    def forward(self, batch):
        return self.w * batch["label"][:2]


def test_bad_model_output_and_missing_pieces(tmp_path):
    trainer = build_trainer(ScalarModel(), make_batches(2, 4, 0), str(tmp_path))
    with pytest.raises(TypeError, match=r"model\(batch\) must return the scalar loss"):
        trainer.train()

    class NoLoss(Trainer):
        def _train_step(self, data, epoch, metrics):
            return None

    trainer = build_trainer(ToyModel(), make_batches(1, 4, 0), str(tmp_path), trainer_cls=NoLoss)
    with pytest.raises(TypeError, match=r"NoLoss\._train_step must return the scalar loss"):
        trainer.train()
    with pytest.raises(ValueError, match="train_dataset"):
        Trainer(ToyModel(), TrainingArguments(output_dir=str(tmp_path))).train()
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(ToyModel(), TrainingArguments(output_dir=str(tmp_path)), train_dataset=[]).train()
    with pytest.raises(TypeError, match="pair"):
        Trainer(ToyModel(), dense_optimizers=None)


def test_no_data_at_all_is_an_error_not_a_finished_job(tmp_path):
    # An upstream job that left an empty file must not give an untrained "success".
    for data, k in (([], 1), (make_batches(1, 4, 0), 2)):
        trainer = build_trainer(ToyModel(), data, str(tmp_path), gradient_accumulation_steps=k)
        with pytest.raises(ValueError) as raised:
            trainer.train()
        batches = "2 batches" if k == 2 else "1 batch"
        assert str(raised.value).startswith(
            f"train_dataset gave not one training step in epoch 0: the data of rank 0 of 1 "
            f"ended before {batches} (one step"
        )
        assert not os.path.exists(tmp_path / "checkpoint")  # nothing saved as if trained


def test_a_job_started_on_a_running_jobs_output_dir_stops_that_job_at_its_next_save(tmp_path):
    class StartsAnotherJob(Hook):
        def after_step(self, metrics, global_step):
            if global_step == 1:  # the same command started again, by mistake
                build_trainer(
                    ToyModel(), make_batches(2, 4, 1), str(tmp_path), train_steps=1
                ).train()

    first = build_trainer(
        ToyModel(),
        make_batches(4, 4, 0),
        str(tmp_path),
        hooks=[StartsAnotherJob()],
        train_steps=4,
        save_steps=2,
    )
    with pytest.raises(CheckpointError, match=r"another job took over output_dir"):
        first.train()
    # The later job's checkpoint stands; the first wrote none.
    assert first.checkpoints.saver.checkpoints() == ["ckpt-1"]


def test_an_output_dir_that_cannot_be_written_stops_training_before_its_first_step(tmp_path):
    (tmp_path / "a-file").write_text("")
    rec = Recorder()
    trainer = build_trainer(
        ToyModel(), make_batches(2, 4, 0), str(tmp_path / "a-file"), hooks=[rec]
    )
    with pytest.raises(CheckpointError, match=r"output_dir .*a-file: rank 0 cannot write there"):
        trainer.train()
    assert not [c for c in rec.calls if c[0] == "before_step"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_steps": 0}, "train_steps"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"save_steps": -1}, "save_steps"),
        ({"max_to_keep": 1.5}, "max_to_keep"),
        ({"output_dir": ""}, "output_dir"),
        ({"model_bank": [{"load": ["dense"]}]}, r"model_bank\[0\]"),
        # Known before minutes of building a model, not at the first save.
        ({"output_dir": "nosuchfs://bucket/job"}, "output_dir 'nosuchfs://bucket/job': Protocol"),
        ({"model_bank": [{"path": "nosuchfs://b/x"}]}, r"model_bank\[0\] 'nosuchfs://b/x'"),
        ({"device": "tpu:7"}, "device"),
        ({"backend": "mpich"}, "backend"),
        ({"keep_freed_host_memory": "yes"}, "keep_freed_host_memory"),
        ({"save_on_sigterm": 1}, "save_on_sigterm must be a bool"),
        ({"eval_every_steps": 0}, "eval_every_steps must be None or an int >= 1"),
        ({"ddp_timeout": 0}, "ddp_timeout must be an int >= 1"),
    ],
)
def test_training_arguments_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(**kwargs)


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc's policy is set on glibc only"
)
@pytest.mark.parametrize("keep", [True, False])
def test_the_trainer_keeps_freed_host_memory_unless_told_not_to(tmp_path, keep):
    # A block that glibc maps on its own by default comes from the kept heap instead
    # (tests/ops/test_table_memory.py shows what that saves).
    setup = (
        "from torch import nn\n"
        "from recis.framework.trainer import Trainer, TrainingArguments\n"
        f"args = TrainingArguments(output_dir={str(tmp_path)!r}, keep_freed_host_memory={keep})\n"
        "Trainer(nn.Linear(2, 1), args)"
    )
    in_heap, _ = step_buffers(setup, steps=0)
    assert in_heap == keep
