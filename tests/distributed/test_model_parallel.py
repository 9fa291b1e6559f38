"""DistributedModelParallel: N ranks x batch B train exactly like 1 rank x batch N*B."""

import copy

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import recis.optim
from recis.distributed import (
    COLUMN_WISE,
    DATA_PARALLEL,
    ROW_WISE,
    TABLE_ROW_WISE,
    TABLE_WISE,
    DistributedModelParallel,
    ShardedEmbeddingBagCollection,
    ShardingError,
    plan_sharding,
)
from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig, filter_out_sparse_param
from recis.testing import run_distributed
from tests.distributed.helpers import (
    TinyModel,
    configs,
    global_table,
    make_batch,
    sgd_from_sparse_grads,
    slice_batch,
)

ALL_TYPES = [TABLE_WISE, ROW_WISE, COLUMN_WISE, TABLE_ROW_WISE, DATA_PARALLEL]
MIXED = {
    "t_sum": ROW_WISE,
    "t_mean": COLUMN_WISE,
    "t_small": DATA_PARALLEL,
    "t_wide": TABLE_ROW_WISE,
}
LR = 0.5
BATCH = 2


def _plans() -> list[dict[str, str]]:
    return [{c.name: kind for c in configs()} for kind in ALL_TYPES] + [MIXED]


def _step_batch(step: int, world: int):
    kjt = make_batch(BATCH * world, 100 + step, weighted=step % 2 == 1)
    label = torch.randn(BATCH * world, generator=torch.Generator().manual_seed(step))
    return kjt, label


def _assert_same_tables(dmp, ref, plan, compare_state=None):
    shards = filter_out_sparse_param(dmp)
    for name, table in filter_out_sparse_param(ref).items():
        mine = shards.get(name)
        if plan.tables[name].sharding_type == DATA_PARALLEL:
            torch.testing.assert_close(mine.weight, table.weight, rtol=1e-5, atol=1e-6)
        else:
            got = global_table(mine, *table.global_shape)
            torch.testing.assert_close(got, table.weight, rtol=1e-5, atol=1e-6)
        if compare_state is not None and mine is not None:
            compare_state(name, mine)


def train_and_compare(plans, make_sparse_opt=None, steps=3, dropped_backward=False):
    """Trains a sharded copy on this rank's slice and a 1-rank reference on the whole
    batch, for each plan; checks tables (and optimizer state) are the same. With
    ``dropped_backward``, each step first runs a backward whose gradients are cleared
    unread (the sharded lookup's gradient all-to-all is still landing then)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    for constraints in plans:
        torch.manual_seed(3)
        model = TinyModel()
        ref = copy.deepcopy(model)
        plan = plan_sharding(model, world_size=world, constraints=constraints)
        dmp = DistributedModelParallel(copy.deepcopy(model), plan=plan)
        dense_opt = torch.optim.SGD(dmp.parameters(), lr=LR)
        ref_dense = torch.optim.SGD(ref.parameters(), lr=LR)
        if make_sparse_opt is not None:
            sparse_opt = make_sparse_opt(filter_out_sparse_param(dmp))
            ref_sparse = make_sparse_opt(filter_out_sparse_param(ref))
        for step in range(steps):
            kjt, label = _step_batch(step, world)
            lo, hi = rank * BATCH, (rank + 1) * BATCH
            if dropped_backward:
                other, other_label = _step_batch(50 + step, world)
                dmp(slice_batch(other, lo, hi), other_label[lo:hi]).backward()
                dense_opt.zero_grad()
                for table in filter_out_sparse_param(dmp).values():
                    table.zero_grad()
            dmp(slice_batch(kjt, lo, hi), label[lo:hi]).backward()
            ref(kjt, label).backward()
            dense_opt.step()
            ref_dense.step()
            dense_opt.zero_grad()
            ref_dense.zero_grad()
            if make_sparse_opt is None:
                sgd_from_sparse_grads(filter_out_sparse_param(dmp), LR)
                sgd_from_sparse_grads(filter_out_sparse_param(ref), LR)
            else:
                sparse_opt.step()
                ref_sparse.step()
                sparse_opt.zero_grad()
                ref_sparse.zero_grad()
        compare_state = None
        if make_sparse_opt is not None:

            def compare_state(name, shard, sparse_opt=sparse_opt, ref_sparse=ref_sparse, plan=plan):
                want_all = ref_sparse.table_state(name)
                for key, got in sparse_opt.table_state(name).items():
                    want = want_all[key]
                    rows = slice(shard.row_offset, shard.row_offset + shard.weight.shape[0])
                    cols = slice(shard.col_offset, shard.col_offset + shard.weight.shape[1])
                    if got.dim() == 2:
                        want = want[rows, cols]
                    elif got.dim() == 1:
                        if plan.tables[name].sharding_type == COLUMN_WISE and world > 1:
                            continue  # per-row state of a column chunk: see the test's note
                        want = want[rows]
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

        _assert_same_tables(dmp, ref, plan, compare_state)
        for (n1, p1), (_, p2) in zip(
            dmp.unwrapped.named_parameters(), ref.named_parameters(), strict=True
        ):
            torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6, msg=n1)
    return True


def dmp_properties():
    """Structure of a DMP: what is a parameter, what is a shard, state_dict keys, meta init."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = TinyModel()
    dmp = DistributedModelParallel(model, plan_sharding(model, constraints=MIXED))
    assert isinstance(dmp.module, DistributedDataParallel) == (world > 1)
    assert [n for n, _ in dmp.unwrapped.named_parameters()] == ["head.weight", "head.bias"]
    assert dmp.plan.tables["t_sum"].sharding_type == ROW_WISE
    shards = filter_out_sparse_param(dmp)
    assert set(shards) == {n for n, t in dmp.plan.tables.items() if t.shard_on(rank)}
    keys = list(dmp.state_dict())
    assert all(k.startswith("module.") and not k.startswith("module.module.") for k in keys)
    assert "module.head.weight" in keys and "module.ebc.tables.t_small.weight" in keys
    dmp.load_state_dict(dmp.state_dict())
    # A model built on meta: each shard initialised by its table's init_fn, nothing whole.
    cfgs = [
        EmbeddingBagConfig("big", 10**6, 8, ["f"], init_fn=lambda w: w.fill_(0.25)),
        EmbeddingBagConfig("other", 7, 8, ["g"]),
    ]
    meta = torch.nn.Sequential()
    meta.add_module("ebc", EmbeddingBagCollection(cfgs, device="meta"))
    dmp2 = DistributedModelParallel(meta, plan_sharding(meta, constraints={"big": ROW_WISE}))
    assert isinstance(dmp2.module, torch.nn.Sequential)  # no dense parameters: no DDP
    sebc = dmp2.unwrapped.ebc
    assert isinstance(sebc, ShardedEmbeddingBagCollection)
    big = sebc.tables["big"]
    assert big.weight.device.type == "cpu" and big.weight.shape[0] == 10**6 // world
    assert bool((big.weight == 0.25).all())
    # Data-parallel replicas start equal on every rank, though only one rank drew
    # from its RNG for "owned" before initialising its replica of "replicated".
    cfgs = [
        EmbeddingBagConfig("owned", 50, 4, ["f"]),
        EmbeddingBagConfig("replicated", 9, 4, ["g"]),
    ]
    meta = torch.nn.Sequential()
    meta.add_module("ebc", EmbeddingBagCollection(cfgs, device="meta"))
    constraints = {"owned": TABLE_WISE, "replicated": DATA_PARALLEL}
    dmp3 = DistributedModelParallel(meta, plan_sharding(meta, constraints=constraints))
    replica = dmp3.unwrapped.ebc.tables["replicated"].weight
    everyone = [torch.empty_like(replica) for _ in range(world)]
    dist.all_gather(everyone, replica)
    assert all(torch.equal(r, everyone[0]) for r in everyone)
    assert bool(replica.abs().sum() > 0)  # initialised, not zeros
    # A table's initial values do not depend on the plan or the number of ranks.
    meta_shards_equal_the_whole_table(MIXED)
    meta_shards_equal_the_whole_table({c.name: COLUMN_WISE for c in configs()})
    return True


def meta_shards_equal_the_whole_table(constraints):
    """Every shard of a model built on meta equals that slice of the table built whole."""
    torch.manual_seed(4)
    whole = EmbeddingBagCollection(configs())
    meta = torch.nn.Sequential()
    meta.add_module("ebc", EmbeddingBagCollection(configs(), device="meta"))
    dmp = DistributedModelParallel(meta, plan_sharding(meta, constraints=constraints))
    for name, shard in filter_out_sparse_param(dmp).items():
        r0, c0 = shard.row_offset, shard.col_offset
        rows, cols = shard.weight.shape
        assert torch.equal(shard.weight, whole.tables[name].weight[r0 : r0 + rows, c0 : c0 + cols])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_training_matches_single_rank_with_reference_sgd(world_size):
    plans = _plans() if world_size == 2 else [MIXED]
    run_distributed(train_and_compare, world_size, plans, timeout=120)


def test_gradients_cleared_unread_change_nothing():
    # A backward's sharded gradients are still landing when zero_grad drops them;
    # training goes on exactly as if that backward had not run (that zero_grad waits
    # for them: tests/nn/test_table.py).
    run_distributed(train_and_compare, 2, _plans(), None, 2, True, timeout=120)


def test_dmp_structure_and_meta_init():
    run_distributed(dmp_properties, 2, timeout=60)
    run_distributed(meta_shards_equal_the_whole_table, 3, MIXED, timeout=60)
    meta_shards_equal_the_whole_table(MIXED)  # no process group: one rank
    # No process group at all: world size 1 without DDP.
    torch.manual_seed(0)
    model = TinyModel()
    ref = copy.deepcopy(model)
    dmp = DistributedModelParallel(model)
    kjt = make_batch(3, 0)
    label = torch.zeros(3)
    torch.testing.assert_close(dmp(kjt, label), ref(kjt, label))
    assert dmp.module is dmp.unwrapped


# --- with the sparse optimizers of recis.optim --------------------------------------
# Column-wise shards of a row-wise-Adagrad table keep their own per-row state (mean
# of g^2 over the chunk's columns, as FBGEMM/TorchRec do), which differs from the
# unsharded table's state: row-wise Adagrad is compared on the other plans only.

OPTIMIZERS = {
    "SparseSGD": {},
    "SparseAdagrad": {"eps": 1e-8},
    "SparseRowWiseAdagrad": {"eps": 1e-8},
    "SparseAdam": {},
    "SparseAdamW": {"weight_decay": 0.01},
}


def _make_opt(name, kwargs):
    cls = getattr(recis.optim, name)
    return lambda tables: cls(tables, lr=0.1, **kwargs)


def train_with_optimizers(names):
    world = dist.get_world_size()
    for name in names:
        plans = _plans()
        if name == "SparseRowWiseAdagrad" and world > 1:
            plans = [p for p in plans if COLUMN_WISE not in p.values()]
        train_and_compare(plans, _make_opt(name, OPTIMIZERS[name]))
    return True


def test_training_matches_single_rank_with_recis_optim():
    run_distributed(train_with_optimizers, 2, list(OPTIMIZERS), timeout=180)


# --- dense buffers under DDP ---------------------------------------------------------


class _ModelWithBuffers(TinyModel):
    """TinyModel plus a persistent buffer (like BatchNorm's running statistics) and a
    non-persistent one (a derived constant, like DLRM's pair index)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("derived", torch.zeros(2), persistent=False)


def buffers_after_one_step():
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = _ModelWithBuffers()
    model.running.fill_(rank + 1.0)
    model.derived.fill_(rank + 1.0)
    dmp = DistributedModelParallel(model, plan_sharding(model, world_size=2))
    dmp(slice_batch(make_batch(4, 0), 2 * rank, 2 * rank + 2), torch.zeros(2)).backward()
    return dmp.unwrapped.running.tolist(), dmp.unwrapped.derived.tolist()


def test_ddp_broadcasts_persistent_buffers_and_leaves_non_persistent_ones_alone():
    results = run_distributed(buffers_after_one_step, 2, timeout=60)
    # rank 0's running statistics reach every rank; derived constants are never sent
    # (they are equal on every rank by construction, here deliberately not).
    assert [r[0] for r in results] == [[1.0, 1.0], [1.0, 1.0]]
    assert [r[1] for r in results] == [[1.0, 1.0], [2.0, 2.0]]


def _model_of_another_config_on_rank_1() -> str:
    """Rank 1 builds t_mean with 14 rows (another config on one node); returns the error."""
    model = TinyModel(device="meta")
    if dist.get_rank() == 1:
        model.ebc = EmbeddingBagCollection(
            [
                EmbeddingBagConfig(c.name, 14, c.embedding_dim, c.feature_names, c.pooling)
                if c.name == "t_mean"
                else c
                for c in configs()
            ],
            device="meta",
        )
    with pytest.raises(ShardingError) as raised:
        DistributedModelParallel(model)
    return str(raised.value)


def test_ranks_that_built_different_models_stop_at_once_naming_the_difference():
    errors = run_distributed(_model_of_another_config_on_rank_1, 2, timeout=60)
    assert errors[0] == errors[1]
    assert errors[0].startswith(
        "the sharding plan of rank(s) [1] differs from rank 0's "
        "(rank 1: table 't_mean' is 14x12 instead of 13x12)"
    )


def test_initialising_big_tables_reports_its_progress(monkeypatch, caplog):
    from recis.framework import progress

    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)  # a line per block of rows
    meta = torch.nn.Sequential()
    meta.add_module(
        "ebc", EmbeddingBagCollection([EmbeddingBagConfig("t", 10000, 8, ["f"])], device="meta")
    )
    with caplog.at_level("INFO", logger="recis.framework.progress"):
        DistributedModelParallel(meta)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # 3 blocks of 4096 rows
    assert lines[-1].startswith(
        "initialising embedding tables: rank 0: 0.00 of 0.00 GiB initialised (100%"
    )
