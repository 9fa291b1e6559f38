"""Sparse optimizers against torch.optim (all rows touched), a lazy reference
(partial touches), gradient accumulation, state handling and validation."""

import copy

import pytest
import torch

from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig, filter_out_sparse_param
from recis.ops import reference
from recis.optim import (
    SparseAdagrad,
    SparseAdam,
    SparseAdamW,
    SparseRowWiseAdagrad,
    SparseSGD,
)
from recis.sparse import KeyedJaggedTensor
from tests.optim.helpers import dense_loss, make_table, random_batch, sparse_loss

# (sparse class, torch class or None, hyper-parameters accepted by both)
OPTIMIZERS = {
    "sgd": (SparseSGD, torch.optim.SGD, dict(lr=0.05, weight_decay=0.01)),
    "adagrad": (SparseAdagrad, torch.optim.Adagrad, dict(lr=0.1, eps=1e-6, weight_decay=0.01)),
    "rowwise_adagrad": (SparseRowWiseAdagrad, None, dict(lr=0.1, eps=1e-6, weight_decay=0.01)),
    "adam": (
        SparseAdam,
        torch.optim.Adam,
        dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.01),
    ),
    "adamw": (
        SparseAdamW,
        torch.optim.AdamW,
        dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
    ),
}


@pytest.mark.parametrize("name", [n for n, v in OPTIMIZERS.items() if v[1] is not None])
@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("dim", [5, 16])  # 16: the kernels compiled for a fixed width
def test_all_rows_touched_equals_torch_optim(name, mean, dim):
    sparse_cls, torch_cls, hyper = OPTIMIZERS[name]
    table = make_table("t", 12, dim)
    dense = torch.nn.Parameter(table.weight.clone())
    opt = sparse_cls({"t": table}, **hyper)
    ref = torch_cls([dense], **hyper)
    for _ in range(6):
        batch = random_batch(12, 6, 4, touch_all=True, weighted=True, dtype=torch.float64)
        target = torch.randn(6, dim, dtype=torch.float64)
        opt.zero_grad()
        sparse_loss(table, batch, target, mean).backward()
        opt.step()
        ref.zero_grad()
        dense_loss(dense, batch, target, mean).backward()
        ref.step()
        torch.testing.assert_close(table.weight, dense.detach(), rtol=1e-10, atol=1e-12)
    if name.startswith("adam"):
        assert int(opt.table_state("t")["step"]) == 6


def _lazy_reference_step(name, weight, state, batch, grad_out, mean, hyper, step):
    """One step of the reference ops (tested against the kernels in tests/ops)."""
    ids, offsets, psw = batch
    args = ([ids], [offsets], [psw], [grad_out], [mean])
    if name == "sgd":
        reference.sparse_sgd_update([weight], *args, hyper["lr"], hyper["weight_decay"])
    elif name in ("adagrad", "rowwise_adagrad"):
        fn = getattr(reference, f"sparse_{name}_update")
        fn([weight], [state["state_sum"]], *args, hyper["lr"], hyper["eps"], hyper["weight_decay"])
    else:
        b1, b2 = hyper["betas"]
        reference.sparse_adam_update(
            [weight], [state["exp_avg"]], [state["exp_avg_sq"]], *args, hyper["lr"], b1, b2,
            hyper["eps"], hyper["weight_decay"], [step], name == "adamw",
        )  # fmt: skip


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_partial_touches_equal_lazy_reference_and_untouched_rows_stay(name):
    sparse_cls, _, hyper = OPTIMIZERS[name]
    tables = {"a": make_table("a", 30, 3), "b": make_table("b", 20, 4, pooling="mean")}
    initial = {n: t.weight.clone() for n, t in tables.items()}
    opt = sparse_cls(tables, **hyper)
    ref_w = {n: t.weight.clone() for n, t in tables.items()}
    ref_state = {n: {k: v.clone() for k, v in opt.table_state(n).items()} for n in tables}
    steps = {"a": 0, "b": 0}
    touched = {n: torch.zeros(t.weight.shape[0], dtype=torch.bool) for n, t in tables.items()}
    for i in range(5):
        opt.zero_grad()
        # Table "b" has no gradient on odd steps: skipped, its step count stays.
        active = ["a", "b"] if i % 2 == 0 else ["a"]
        grads = {}
        for n in active:
            t = tables[n]
            mean = n == "b"
            # Only rows below 10 are ever touched.
            batch = random_batch(10, 5, 3, touch_all=False, weighted=True, dtype=torch.float64)
            out = torch.randn(5, t.weight.shape[1], dtype=torch.float64)
            sparse_loss(t, batch, out, mean).backward()
            grads[n] = (batch, t.sparse_grad().grad_out.clone(), mean)
            touched[n][batch[0]] = True
        opt.step()
        for n, (batch, grad_out, mean) in grads.items():
            steps[n] += 1
            _lazy_reference_step(
                name, ref_w[n], ref_state[n], batch, grad_out, mean, hyper, steps[n]
            )
    for n, t in tables.items():
        torch.testing.assert_close(t.weight, ref_w[n], rtol=1e-10, atol=1e-12)
        for k, v in opt.table_state(n).items():
            if k == "step":
                assert int(v) == steps[n]
            else:
                torch.testing.assert_close(v, ref_state[n][k], rtol=1e-10, atol=1e-12)
        assert torch.equal(t.weight[~touched[n]], initial[n][~touched[n]])
        assert not torch.equal(t.weight[touched[n]], initial[n][touched[n]])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_gradient_accumulation_equals_one_step_on_the_joined_batch(name):
    sparse_cls, _, hyper = OPTIMIZERS[name]
    k, bags = 3, 4
    acc_table, big_table = make_table("t", 15, 6), make_table("t", 15, 6)
    big_table.weight.copy_(acc_table.weight)
    acc_opt, big_opt = sparse_cls({"t": acc_table}, **hyper), sparse_cls({"t": big_table}, **hyper)
    for _ in range(2):
        micro = [
            random_batch(15, bags, 5, touch_all=False, weighted=True, dtype=torch.float64)
            for _ in range(k)
        ]
        targets = [torch.randn(bags, 6, dtype=torch.float64) for _ in range(k)]
        acc_opt.zero_grad()
        for batch, target in zip(micro, targets, strict=True):
            (sparse_loss(acc_table, batch, target, True) / k).backward()
        acc_opt.step()
        # The same samples as one batch (mean loss over k * bags samples).
        lengths = torch.cat([b[1].diff() for b in micro])
        joined = (
            torch.cat([b[0] for b in micro]),
            torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
            torch.cat([b[2] for b in micro]),
        )
        big_opt.zero_grad()
        sparse_loss(big_table, joined, torch.cat(targets), True).backward()
        big_opt.step()
        torch.testing.assert_close(acc_table.weight, big_table.weight, rtol=1e-10, atol=1e-12)


def test_float32_tables_and_an_embedding_bag_collection():
    ebc = EmbeddingBagCollection(
        [EmbeddingBagConfig("t0", 40, 8, ["f0"]), EmbeddingBagConfig("t1", 30, 4, ["f1"], "mean")]
    )
    tables = filter_out_sparse_param(ebc)
    before = {n: t.weight.clone() for n, t in tables.items()}
    opt = SparseRowWiseAdagrad(tables, lr=0.1)
    kjt = KeyedJaggedTensor(["f0", "f1"], torch.tensor([1, 2, 3, 4, 5]), torch.tensor([2, 1, 0, 2]))
    ebc(kjt).values().sum().backward()
    opt.step()
    for n, t in tables.items():
        changed = (t.weight != before[n]).any(dim=1).nonzero().flatten().tolist()
        assert changed == ([1, 2, 3] if n == "t0" else [4, 5])
    assert opt.table_state("t0")["state_sum"].dtype == torch.float32


def test_zero_grad_clears_and_step_without_grad_changes_nothing():
    table = make_table("t", 10, 3)
    before = table.weight.clone()
    opt = SparseAdam({"t": table}, lr=0.1)
    batch = random_batch(10, 3, 3, touch_all=True, weighted=False, dtype=torch.float64)
    sparse_loss(table, batch, torch.zeros(3, 3, dtype=torch.float64), False).backward()
    opt.zero_grad()
    assert table.sparse_grad() is None
    opt.step()
    assert torch.equal(table.weight, before)
    assert int(opt.table_state("t")["step"]) == 0


def test_lr_scheduler_changes_the_learning_rate():
    table = make_table("t", 4, 2)
    opt = SparseSGD({"t": table}, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    ids, offsets = torch.tensor([1]), torch.tensor([0, 1])
    for lr in (1.0, 0.1, 0.01):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)
        before = table.weight[1].clone()
        out = torch.ops.recis.pooled_lookup(table.weight, ids, offsets, None, 0)
        del out
        from recis.nn import table_lookup

        table_lookup(table, ids, offsets).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        torch.testing.assert_close(table.weight[1], before - lr)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip_resumes_identically(name):
    sparse_cls, _, hyper = OPTIMIZERS[name]
    tables = {"a": make_table("a", 12, 3), "b": make_table("b", 9, 2)}
    opt = sparse_cls(tables, **hyper)

    def train(opt, tables, batches):
        for batch in batches:
            opt.zero_grad()
            for t in tables.values():
                sparse_loss(
                    t, batch, torch.ones(4, t.weight.shape[1], dtype=torch.float64), False
                ).backward()
            opt.step()

    def batches(n):
        return [random_batch(9, 4, 3, False, True, torch.float64) for _ in range(n)]

    train(opt, tables, batches(2))
    saved = copy.deepcopy(opt.state_dict())
    tables2 = {n: make_table(n, t.weight.shape[0], t.weight.shape[1]) for n, t in tables.items()}
    for n in tables:
        tables2[n].weight.copy_(tables[n].weight)
    opt2 = sparse_cls(tables2, lr=123.0)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == hyper["lr"]
    more = batches(2)
    train(opt, tables, more)
    train(opt2, tables2, more)
    for n in tables:
        assert torch.equal(tables[n].weight, tables2[n].weight)
        for k, v in opt.table_state(n).items():
            assert torch.equal(v, opt2.table_state(n)[k])


def test_table_state_shapes_and_set_table_state_validation():
    table = make_table("t", 6, 3, dtype=torch.float32)
    rw = SparseRowWiseAdagrad({"t": table}, initial_accumulator_value=0.5)
    assert rw.table_state("t")["state_sum"].shape == (6,)
    assert torch.equal(rw.table_state("t")["state_sum"], torch.full((6,), 0.5))
    adam = SparseAdamW({"t": table})
    st = adam.table_state("t")
    assert st["exp_avg"].shape == (6, 3) and st["step"].dim() == 0
    adam.set_table_state("t", {"step": torch.tensor(4), "exp_avg": torch.ones(6, 3).double(),
                               "exp_avg_sq": torch.ones(6, 3)})  # fmt: skip
    assert adam.table_state("t")["exp_avg"].dtype == torch.float32
    assert int(adam.table_state("t")["step"]) == 4
    with pytest.raises(ValueError, match=r"must have keys \['exp_avg', 'exp_avg_sq', 'step'\]"):
        adam.set_table_state("t", {"exp_avg": torch.ones(6, 3)})
    with pytest.raises(ValueError, match=r"state 'exp_avg' of table 't' must have shape \[6, 3\]"):
        adam.set_table_state(
            "t",
            {"step": torch.tensor(1), "exp_avg": torch.ones(5, 3), "exp_avg_sq": torch.ones(6, 3)},
        )
    with pytest.raises(KeyError, match="no table named 'x'"):
        adam.table_state("x")
    with pytest.raises(ValueError, match="state dict is for tables"):
        SparseAdamW({"u": make_table("u", 6, 3)}).load_state_dict(adam.state_dict())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_table_state_kinds_tell_the_shapes_before_the_state_exists(name):
    opt = OPTIMIZERS[name][0]({"t": make_table("t", 6, 3)})
    kinds = opt.table_state_kinds("t")
    assert opt._table_states == {}  # nothing created
    shapes = {"element": (6, 3), "row": (6,), "scalar": ()}
    assert {k: shapes[kind] for k, kind in kinds.items()} == {
        k: tuple(v.shape) for k, v in opt.table_state("t").items()
    }
    with pytest.raises(KeyError, match="no table named 'x'"):
        opt.table_state_kinds("x")


def test_hyper_parameter_validation():
    t = {"t": make_table("t", 3, 2)}
    with pytest.raises(ValueError, match="SparseSGD: lr must be a finite number >= 0, got -1"):
        SparseSGD(t, lr=-1.0)
    with pytest.raises(ValueError, match="SparseAdagrad: eps must be a finite number >= 0"):
        SparseAdagrad(t, eps=-1e-3)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        SparseRowWiseAdagrad(t, weight_decay=-0.1)
    with pytest.raises(ValueError, match=r"SparseAdam: betas must be two values in \[0, 1\)"):
        SparseAdam(t, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="betas"):
        SparseAdamW(t, betas=(-0.1, 0.9))
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got nan"):
        SparseAdam(t, lr=float("nan"))
    with pytest.raises(ValueError, match="SparseRowWiseAdagrad: lr must be a finite number >= 0"):
        SparseRowWiseAdagrad(t, lr=float("inf"))
    with pytest.raises(TypeError, match="must be a dict name -> EmbeddingTable"):
        SparseSGD([t["t"]], lr=0.1)
    with pytest.raises(TypeError, match="table 'x' is a Tensor"):
        SparseSGD({"x": torch.zeros(2)}, lr=0.1)


def test_no_tables_is_allowed():
    # A rank may own no table shard; stepping it is a no-op.
    opt = SparseAdam({}, lr=0.1)
    opt.step()
    assert opt.state_dict()["state"] == {}


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_cuda_tables_match_cpu_tables(name):
    sparse_cls, _, hyper = OPTIMIZERS[name]
    cpu = make_table("t", 50, 16, dtype=torch.float32)
    gpu = make_table("t", 50, 16, dtype=torch.float32)
    gpu.weight = cpu.weight.cuda()
    gpu.grad_anchor = gpu.grad_anchor.cuda()
    opts = [sparse_cls({"t": cpu}, **hyper), sparse_cls({"t": gpu}, **hyper)]
    for _ in range(3):
        batch = random_batch(50, 8, 6, touch_all=False, weighted=True, dtype=torch.float32)
        target = torch.randn(8, 16)
        for table, opt in zip((cpu, gpu), opts, strict=True):
            dev = table.weight.device
            moved = tuple(t.to(dev) for t in batch)
            opt.zero_grad()
            sparse_loss(table, moved, target.to(dev), False).backward()
            opt.step()
        torch.testing.assert_close(gpu.weight.cpu(), cpu.weight, rtol=1e-5, atol=1e-5)
