"""Checkpoints of real DistributedModelParallel models with a real sparse optimizer:
saved on 2 ranks under one mix of sharding types, loaded on 1 and on 3 ranks under
others, every shard's weights and optimizer state equal the saved global tables, and
the optimizer's hyper-parameters (an LR scheduler's lr) are those it was saved with."""

import torch

from recis.distributed import DistributedModelParallel, plan_sharding
from recis.framework.checkpoint_manager import Saver
from recis.nn import filter_out_sparse_param
from recis.optim import SparseAdam
from recis.testing import run_distributed
from tests.distributed.helpers import TinyModel, make_batch, slice_batch

PLAN_ON_2 = {
    "t_sum": "row_wise",
    "t_mean": "column_wise",
    "t_small": "data_parallel",
    "t_wide": "table_row_wise",
}
PLAN_ON_3 = {
    "t_sum": "column_wise",
    "t_mean": "row_wise",
    "t_small": "table_wise",
    "t_wide": "data_parallel",
}


def build(constraints, seed):
    torch.manual_seed(seed)
    model = TinyModel()
    dmp = DistributedModelParallel(model, plan=plan_sharding(model, constraints=constraints))
    return dmp, SparseAdam(filter_out_sparse_param(dmp), lr=0.05)


def local_shards(dmp, opt):
    return [
        (
            name,
            t.row_offset,
            t.col_offset,
            t.weight.clone(),
            {k: v.clone() for k, v in opt.table_state(name).items()},
            opt.table_hyperparameters(name),
        )
        for name, t in filter_out_sparse_param(dmp).items()
    ]


def train_and_save(path):
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    dmp, sparse_opt = build(PLAN_ON_2, seed=0)
    dense_opt = torch.optim.SGD(dmp.parameters(), lr=0.1)
    sparse_opt.param_groups[0]["betas"] = (0.8, 0.9)
    schedule = torch.optim.lr_scheduler.StepLR(sparse_opt, step_size=1, gamma=0.5)
    for step in range(2):
        kjt = make_batch(8, seed=step, weighted=True)
        labels = torch.linspace(-1, 1, 8)
        per_rank = 8 // world
        lo, hi = rank * per_rank, (rank + 1) * per_rank
        dmp(slice_batch(kjt, lo, hi), labels[lo:hi]).backward()
        dense_opt.step()
        sparse_opt.step()
        schedule.step()
        dense_opt.zero_grad()
        sparse_opt.zero_grad()
    Saver(dmp, sparse_opt, path, max_keep=2, concurrency=2).save("ckpt-2")
    return local_shards(dmp, sparse_opt)


def load(path, constraints):
    dmp, sparse_opt = build(constraints, seed=123)  # other initial values, overwritten
    Saver(dmp, sparse_opt, path, max_keep=2, concurrency=3).load()
    return local_shards(dmp, sparse_opt)


def assert_slices_of(full, shards):
    for name, row, col, weight, state, hyper in shards:
        _, _, _, global_weight, global_state, _ = full[name]
        assert hyper["lr"] == 0.05 * 0.5**2 and hyper["betas"] == (0.8, 0.9), name
        rows, cols = weight.shape
        assert torch.equal(weight, global_weight[row : row + rows, col : col + cols]), name
        assert state.keys() == global_state.keys(), name
        for key, value in state.items():
            want = global_state[key]
            if value.dim() == 2:
                want = want[row : row + rows, col : col + cols]
            assert torch.equal(value, want), (name, key)


def test_dmp_checkpoint_reshards_weights_and_adam_state_across_plans(tmp_path):
    path = str(tmp_path / "ckpt")
    saved = run_distributed(train_and_save, 2, path)
    (on_one,) = run_distributed(load, 1, path, {})
    full = {shard[0]: shard for shard in on_one}
    assert all(s[1] == 0 and s[2] == 0 for s in on_one)  # world 1: whole tables
    assert any(s[4]["step"] > 0 for s in on_one)  # Adam state was really trained
    for rank_shards in saved:
        assert_slices_of(full, rank_shards)
    for rank_shards in run_distributed(load, 3, path, PLAN_ON_3):
        assert_slices_of(full, rank_shards)
