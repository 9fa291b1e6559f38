"""Sharded EmbeddingBagCollection: recis vs TorchRec DistributedModelParallel.

Run under torchrun (CPU, gloo)::

    OMP_NUM_THREADS=1 .venv/bin/torchrun --nproc_per_node=2 benchmarks/sharded_ebc.py

One training step = forward + backward + sparse row-wise Adagrad step, on each
rank's own batch. For each sharding type TorchRec supports on CPU (table_wise,
column_wise, data_parallel) both run with the same tables, batch and placement
(recis's plan is copied from TorchRec's), alternating blocks of steps in one job;
recis row_wise is reported against recis table_wise. TorchRec fuses row-wise Adagrad
into its backward (apply_optimizer_in_backward + FBGEMM's CPU TBE). recis uses
``recis.optim.SparseRowWiseAdagrad`` when it is installed, else the plain-torch
row-wise Adagrad below (marked ``"recis_optimizer": "torch-fallback"`` in the output).
Prints one JSON line per result, then a markdown table (rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

from recis.distributed import (
    COLUMN_WISE,
    DATA_PARALLEL,
    ROW_WISE,
    TABLE_WISE,
    DistributedModelParallel,
    Shard,
    ShardingPlan,
    TablePlan,
    plan_sharding,
    shutdown_distributed,
)
from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig, filter_out_sparse_param
from recis.sparse import KeyedJaggedTensor

LR, EPS = 0.01, 1e-8


class Wrap(nn.Module):
    def __init__(self, ebc: nn.Module) -> None:
        super().__init__()
        self.ebc = ebc

    def forward(self, kjt):
        return self.ebc(kjt)


def loss_of(kt) -> torch.Tensor:
    return kt.values().pow(2).sum() * 1e-3


def make_batch(args, rank: int, step: int) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(1000 * rank + step)
    keys = [f"f{i}" for i in range(args.tables)]
    lengths = torch.randint(0, 2 * args.pooling + 1, (args.tables * args.batch,), generator=g)
    values = torch.randint(0, args.rows, (int(lengths.sum()),), generator=g)
    return KeyedJaggedTensor(keys, values, lengths)


# --- the sparse step for recis ------------------------------------------------------
class TorchRowWiseAdagrad:
    """Row-wise Adagrad from SparseGrad records in plain torch (used when recis.optim is
    not installed): dedup ids, sum their rows, s += mean(g^2), w -= lr g / (sqrt(s)+eps)."""

    def __init__(self, tables, lr: float, eps: float) -> None:
        self.tables, self.lr, self.eps = tables, lr, eps
        self.state = {n: torch.zeros(t.weight.shape[0]) for n, t in tables.items()}

    def step(self) -> None:
        for name, t in self.tables.items():
            g = t.sparse_grad()
            if g is None or g.ids.numel() == 0:
                continue
            lengths = g.offsets[1:] - g.offsets[:-1]
            bag = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
            rows = g.grad_out[bag]
            if g.per_sample_weights is not None:
                rows = rows * g.per_sample_weights[:, None]
            if g.mean:
                rows = rows / lengths.clamp(min=1)[bag, None]
            uniq, inv = torch.unique(g.ids, return_inverse=True)
            summed = torch.zeros(uniq.numel(), rows.shape[1]).index_add_(0, inv, rows)
            s = self.state[name]
            s.index_add_(0, uniq, summed.pow(2).mean(1))
            summed /= s.index_select(0, uniq).sqrt_().add_(self.eps)[:, None]
            t.weight.index_add_(0, uniq, summed, alpha=-self.lr)

    def zero_grad(self) -> None:
        for t in self.tables.values():
            t.zero_grad()


def recis_optimizer(tables):
    try:
        from recis.optim import SparseRowWiseAdagrad

        return SparseRowWiseAdagrad(tables, lr=LR, eps=EPS), "recis.optim"
    except ImportError:
        return TorchRowWiseAdagrad(tables, LR, EPS), "torch-fallback"


# --- models -------------------------------------------------------------------------
def configs(args) -> list[EmbeddingBagConfig]:
    return [EmbeddingBagConfig(f"t{i}", args.rows, args.dim, [f"f{i}"]) for i in range(args.tables)]


def build_torchrec(args, kind: str, pg):
    import torchrec
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel as TRDMP
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingEnv
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    world = dist.get_world_size()
    tables = [
        torchrec.EmbeddingBagConfig(
            name=c.name,
            embedding_dim=c.embedding_dim,
            num_embeddings=c.num_embeddings,
            feature_names=c.feature_names,
            pooling=torchrec.PoolingType.SUM,
        )
        for c in configs(args)
    ]
    model = Wrap(torchrec.EmbeddingBagCollection(tables=tables, device=torch.device("meta")))
    apply_optimizer_in_backward(RowWiseAdagrad, model.ebc.parameters(), {"lr": LR, "eps": EPS})
    kernel = "dense" if kind == DATA_PARALLEL else "fused"
    # Column-wise: ask for one chunk per rank (TorchRec's default keeps 64-wide tables whole).
    min_partition = max(4, args.dim // world) if kind == COLUMN_WISE else None
    constraints = {
        t.name: ParameterConstraints(
            sharding_types=[kind], compute_kernels=[kernel], min_partition=min_partition
        )
        for t in tables
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device="cpu", local_world_size=world),
        constraints=constraints,
    )
    sharders = [EmbeddingBagCollectionSharder()]
    plan = planner.collective_plan(model, sharders, pg)
    dmp = TRDMP(
        model,
        env=ShardingEnv.from_process_group(pg),
        device=torch.device("cpu"),
        plan=plan,
        sharders=sharders,
    )
    return dmp, plan


def recis_plan_like(args, kind: str, tr_plan, world: int) -> ShardingPlan | None:
    """recis's plan with TorchRec's placement (None when it cannot be expressed)."""
    tables = {}
    for name, ps in tr_plan.plan["ebc"].items():
        shards = []
        if kind == DATA_PARALLEL:
            shards = [Shard(r, 0, args.rows, 0, args.dim) for r in range(world)]
        elif ps.sharding_spec is None:
            shards = [Shard(ps.ranks[0], 0, args.rows, 0, args.dim)]
        else:
            for md in ps.sharding_spec.shards:
                rank = int(str(md.placement).split("rank:")[1].split("/")[0])
                (r0, c0), (nr, nc) = md.shard_offsets, md.shard_sizes
                shards.append(Shard(rank, r0, nr, c0, nc))
        tables[name] = TablePlan(name, kind, args.rows, args.dim, shards)
    plan = ShardingPlan(world, world, tables)
    try:
        plan.validate()
    except ValueError:
        return None
    return plan


def build_recis(args, plan: ShardingPlan):
    model = Wrap(EmbeddingBagCollection(configs(args), device="meta"))
    dmp = DistributedModelParallel(model, plan=plan)
    opt, which = recis_optimizer(filter_out_sparse_param(dmp))
    return dmp, opt, which


# --- timing -------------------------------------------------------------------------
def recis_step(dmp, opt, kjt) -> None:
    loss_of(dmp(kjt)).backward()
    opt.step()
    opt.zero_grad()


def recis_fwd_bwd(dmp, kjt) -> None:
    """Forward + backward only (the gradient is recorded, no optimizer step): shows how
    much of the step the optimizer takes."""
    loss_of(dmp(kjt)).backward()
    for t in filter_out_sparse_param(dmp).values():
        t.zero_grad()


def torchrec_step(dmp, kjt) -> None:
    loss_of(dmp(kjt)).backward()  # the optimizer is fused into backward


def timed(fn, batches, steps: int) -> float:
    dist.barrier()
    start = time.perf_counter()
    for i in range(steps):
        fn(batches[i % len(batches)])
    dist.barrier()
    return time.perf_counter() - start


def analytic_min(args, plan: ShardingPlan, kjt: KeyedJaggedTensor, rank: int) -> dict[str, int]:
    """Fewest bytes this rank must send per step: each id once to each remote shard that
    needs it (int64), each pooled block once from each remote shard (float32)."""
    out = {"input_dist": 0, "output_dist": 0}
    for i, t in enumerate(plan.tables.values()):
        if t.sharding_type == DATA_PARALLEL:
            continue
        ids = kjt[f"f{i}"].values()
        for s in t.shards:
            if s.rank == rank:
                continue
            if t.splits_rows:
                n = int(((ids >= s.row_offset) & (ids < s.row_offset + s.rows)).sum())
            else:
                n = ids.numel()
            out["input_dist"] += 8 * n
        # pooled rows this rank's shards send to the other ranks (same batch size)
        mine = t.shard_on(rank)
        if mine is not None:
            out["output_dist"] += 4 * args.batch * mine.cols * (dist.get_world_size() - 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1024, help="samples per rank")
    p.add_argument("--pooling", type=int, default=10, help="mean ids per bag")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--kinds", default="table_wise,column_wise,data_parallel,row_wise")
    p.add_argument("--print-plans", action="store_true", help="print recis's plans (rank 0)")
    p.add_argument(
        "--profile", action="store_true", help="print the top ops of recis and its peer (rank 0)"
    )
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    pg = dist.group.WORLD
    torch.manual_seed(0)
    batches = [make_batch(args, rank, s) for s in range(4)]
    results = []
    for kind in args.kinds.split(","):
        if kind == ROW_WISE:
            # TorchRec has no row_wise on CPU: compare with recis table_wise.
            probe = Wrap(EmbeddingBagCollection(configs(args), device="meta"))
            rw = build_recis(
                args, plan_sharding(probe, world, {c.name: ROW_WISE for c in configs(args)})
            )
            tw = build_recis(
                args, plan_sharding(probe, world, {c.name: TABLE_WISE for c in configs(args)})
            )
            runs = {
                "recis": (lambda kjt, m=rw: recis_step(m[0], m[1], kjt)),
                "peer": (lambda kjt, m=tw: recis_step(m[0], m[1], kjt)),
                "recis_fwd_bwd": (lambda kjt, m=rw: recis_fwd_bwd(m[0], kjt)),
            }
            peer_name, which, plan = "recis table_wise", rw[2], rw[0].plan
            comm_model = rw[0]
            inputs = {"recis": batches, "peer": batches, "recis_fwd_bwd": batches}
        else:
            tr, tr_plan = build_torchrec(args, kind, pg)
            plan = recis_plan_like(args, kind, tr_plan, world)
            same = plan is not None
            if plan is None:
                probe = Wrap(EmbeddingBagCollection(configs(args), device="meta"))
                plan = plan_sharding(probe, world, {c.name: kind for c in configs(args)})
            rc = build_recis(args, plan)
            tr_batches = [b.to_torchrec() for b in batches]
            runs = {
                "recis": (lambda kjt, m=rc: recis_step(m[0], m[1], kjt)),
                "peer": (lambda kjt, m=tr, tb=tr_batches: torchrec_step(m, tb[kjt])),
                "recis_fwd_bwd": (lambda kjt, m=rc: recis_fwd_bwd(m[0], kjt)),
            }
            peer_name = "torchrec" + ("" if same else " (different placement)")
            which, comm_model = rc[2], rc[0]
            inputs = {
                "recis": batches,
                "peer": list(range(len(batches))),
                "recis_fwd_bwd": batches,
            }
        if args.print_plans and rank == 0:
            print(plan, flush=True)
        for name, fn in runs.items():  # warm-up
            timed(fn, inputs[name], 2)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                times[name].append(timed(fn, inputs[name], args.steps))
        if args.profile:
            for name in ("recis", "peer"):
                with torch.profiler.profile() as prof:
                    timed(runs[name], inputs[name], args.steps)
                if rank == 0:
                    print(f"\n# profile: {kind}, {name}, {args.steps} steps (rank 0)")
                    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        recis_step(comm_model, recis_optimizer(filter_out_sparse_param(comm_model))[0], batches[0])
        comm = comm_model.comm_bytes()
        minimum = analytic_min(args, plan, batches[0], rank)
        sps = {k: args.batch * args.steps / statistics.median(v) for k, v in times.items()}
        result = {
            "bench": "sharded_ebc",
            "sharding": kind,
            "peer": peer_name,
            "world_size": world,
            "rank": rank,
            "tables": args.tables,
            "rows": args.rows,
            "dim": args.dim,
            "batch_per_rank": args.batch,
            "pooling": args.pooling,
            "recis_samples_per_s": round(sps["recis"], 1),
            "peer_samples_per_s": round(sps["peer"], 1),
            "speedup": round(sps["recis"] / sps["peer"], 3),
            "recis_fwd_bwd_samples_per_s": round(sps["recis_fwd_bwd"], 1),
            "recis_optimizer": which,
            "comm_bytes": comm,
            "comm_min_bytes": minimum,
        }
        gathered = [None] * world
        dist.all_gather_object(gathered, result)
        if rank == 0:
            for r in gathered:
                print(json.dumps(r), flush=True)
            results.append(gathered[0])
    if rank == 0:
        print(
            "\n| sharding | peer | recis samples/s/rank | peer samples/s/rank | recis/peer "
            "| recis fwd+bwd only | input_dist B (min) | output_dist B (min) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            c, m = r["comm_bytes"], r["comm_min_bytes"]
            print(
                f"| {r['sharding']} | {r['peer']} | {r['recis_samples_per_s']} | "
                f"{r['peer_samples_per_s']} | {r['speedup']}x | "
                f"{r['recis_fwd_bwd_samples_per_s']} | "
                f"{c.get('input_dist', 0)} ({m['input_dist']}) | "
                f"{c.get('output_dist', 0)} ({m['output_dist']}) |"
            )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
    shutdown_distributed()  # after main(): its models no longer hold the group
