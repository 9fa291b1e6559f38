"""End to end: DLRM training samples/s, recis vs TorchRec DMP + DDP (CPU, gloo).

Run under torchrun::

    OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc_per_node=2 benchmarks/e2e.py
    OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc_per_node=2 benchmarks/e2e.py --small

Both sides train the same DLRM (26 Criteo tables, bottom MLP, pairwise-dot
interaction, top MLP ending in one logit) on the same synthetic Criteo batches
(pre-generated, so data generation is not timed) with table_wise sharding and the
same table placement (recis's plan copies TorchRec's), row-wise Adagrad on the
embeddings and torch Adagrad on the dense part. One step:

- recis: ``clear_metrics()`` (as the Trainer does every step), ``loss = dmp(batch)``,
  ``loss.backward()``, dense step, sparse step (``recis.optim.SparseRowWiseAdagrad``),
  zero grads;
- TorchRec: ``logits = dmp(dense, kjt)``, BCE-with-logits, ``backward()`` (row-wise
  Adagrad fused into backward by ``apply_optimizer_in_backward``), dense step, zero grads.

Like the Trainer, the job first makes malloc keep the memory each step frees
(``recis.ops.keep_freed_host_memory``; ``--malloc_defaults`` leaves it out): the
process's setting, so TorchRec's steps get it too.

Blocks of ``--steps`` steps alternate between the two in one job (``--blocks`` of
each); the median block gives samples/s per rank. Prints one JSON line per result,
then a markdown table (rank 0), plus the time per step phase (forward, backward,
dense step, sparse step; each includes waiting for the other rank).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections import defaultdict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from machine import add_malloc_option, apply_malloc_option

from recis.distributed import (
    TABLE_WISE,
    DistributedModelParallel,
    Shard,
    ShardingPlan,
    TablePlan,
    shutdown_distributed,
)
from recis.framework.metrics import clear_metrics
from recis.io import SyntheticCriteoDataset, default_table_sizes
from recis.models import DLRM, criteo_tables
from recis.nn import filter_out_sparse_param
from recis.optim import SparseRowWiseAdagrad

LR, EPS = 0.01, 1e-8


def build_torchrec(configs, args, pg):
    """TorchRec DLRM with the same tables and MLP widths, table_wise, fused row-wise Adagrad."""
    import torchrec
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel as TRDMP
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingEnv
    from torchrec.models.dlrm import DLRM as TRDLRM
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    world = dist.get_world_size()
    tables = [
        torchrec.EmbeddingBagConfig(
            name=c.name,
            embedding_dim=c.embedding_dim,
            num_embeddings=c.num_embeddings,
            feature_names=list(c.feature_names),
            pooling=torchrec.PoolingType.SUM,
        )
        for c in configs
    ]
    ebc = torchrec.EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    # TorchRec's over arch appends the final 1-unit layer itself, as recis's top MLP does.
    model = TRDLRM(ebc, 13, list(args.bottom), [*args.top, 1])
    apply_optimizer_in_backward(
        RowWiseAdagrad, model.sparse_arch.parameters(), {"lr": LR, "eps": EPS}
    )
    constraints = {
        t.name: ParameterConstraints(sharding_types=[TABLE_WISE], compute_kernels=["fused"])
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
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.Adagrad(params, lr=LR, eps=EPS),
    )
    placement = {}
    for module_plan in plan.plan.values():
        for name, ps in module_plan.items():
            placement[name] = ps.ranks[0]
    n_dense = sum(p.numel() for _, p in in_backward_optimizer_filter(dmp.named_parameters()))
    shapes = sorted(
        (c.name, c.num_embeddings, c.embedding_dim) for c in ebc.embedding_bag_configs()
    )
    return dmp, dense, placement, n_dense, shapes


def build_recis(configs, args, placement: dict[str, int]):
    model = DLRM(tables=configs, bottom_mlp=args.bottom, top_mlp=args.top, embedding_device="meta")
    world = dist.get_world_size()
    plan = ShardingPlan(
        world,
        world,
        {
            c.name: TablePlan(
                c.name,
                TABLE_WISE,
                c.num_embeddings,
                c.embedding_dim,
                [Shard(placement[c.name], 0, c.num_embeddings, 0, c.embedding_dim)],
            )
            for c in configs
        },
    )
    dmp = DistributedModelParallel(model, plan=plan)
    sparse = SparseRowWiseAdagrad(filter_out_sparse_param(dmp), lr=LR, eps=EPS)
    dense = torch.optim.Adagrad(dmp.parameters(), lr=LR, eps=EPS)
    n_dense = sum(p.numel() for p in dmp.parameters())
    return dmp, dense, sparse, n_dense


class Phases:
    """Accumulates wall time per named phase of a step."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.t = 0.0

    def start(self) -> None:
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.total[name] += now - self.t
        self.t = now


def recis_step(m, batch, ph: Phases) -> None:
    dmp, dense, sparse = m
    ph.start()
    # The model reports loss and AUC predictions with add_metric; uncleared, the
    # predictions of every step so far would be concatenated again at each step.
    clear_metrics()
    loss = dmp(batch)
    ph.lap("forward")
    loss.backward()
    ph.lap("backward")
    dense.step()
    ph.lap("dense_step")
    sparse.step()
    ph.lap("sparse_step")
    dense.zero_grad()
    sparse.zero_grad()
    ph.lap("zero_grad")


def torchrec_step(m, batch, ph: Phases) -> None:
    dmp, dense = m
    ph.start()
    logits = dmp(batch["dense"], batch["sparse"]).squeeze(1)
    loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
    ph.lap("forward")
    loss.backward()  # the sparse optimizer runs inside backward
    ph.lap("backward")
    dense.step()
    ph.lap("dense_step")
    dense.zero_grad()
    ph.lap("zero_grad")


def timed(fn, model, batches, steps: int, ph: Phases) -> float:
    dist.barrier()
    start = time.perf_counter()
    for i in range(steps):
        fn(model, batches[i % len(batches)], ph)
    dist.barrier()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch_size", type=int, default=1024, help="samples per rank")
    p.add_argument("--table_size", type=int, default=100_000, help="rows cap per table")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="steps per block")
    p.add_argument("--blocks", type=int, default=10, help="blocks of each implementation")
    p.add_argument("--batches", type=int, default=4, help="pre-generated batches per rank")
    p.add_argument("--profile", action="store_true", help="print top ops per impl (rank 0)")
    p.add_argument("--small", action="store_true", help="quick run (~30 s)")
    add_malloc_option(p)
    args = p.parse_args()
    kept_freed_memory = apply_malloc_option(args)
    if args.small:
        args.table_size, args.batch_size, args.steps, args.blocks = 10_000, 256, 10, 3
    args.bottom, args.top = (64, args.dim), (64, 32)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    sizes = default_table_sizes(cap=args.table_size)
    configs = criteo_tables(sizes, args.dim)
    ds = SyntheticCriteoDataset(args.batch_size, sizes, seed=0, rank=rank, world_size=world)
    batches = [ds.make_batch(i)[0] for i in range(args.batches)]
    tr_batches = [{**b, "sparse": b["sparse"].to_torchrec()} for b in batches]

    tr, tr_dense, placement, tr_n_dense, tr_tables = build_torchrec(configs, args, dist.group.WORLD)
    rc, rc_dense, rc_sparse, rc_n_dense = build_recis(configs, args, placement)
    rc_tables = sorted((c.name, c.num_embeddings, c.embedding_dim) for c in configs)
    same = tr_n_dense == rc_n_dense and tr_tables == rc_tables
    if rank == 0:
        print(
            f"check: dense params recis={rc_n_dense} torchrec={tr_n_dense}; "
            f"{len(rc_tables)} tables, {sum(t[1] for t in rc_tables)} rows x dim {args.dim}, "
            f"embedding sizes {'identical' if tr_tables == rc_tables else 'DIFFER'}; "
            f"placement rank0={sum(r == 0 for r in placement.values())} tables; "
            f"{'SAME' if same else 'DIFFERENT'} model",
            flush=True,
        )

    runs = {
        "recis": (recis_step, (rc, rc_dense, rc_sparse), batches),
        "torchrec": (torchrec_step, (tr, tr_dense), tr_batches),
    }
    phases = {name: Phases() for name in runs}
    for fn, m, b in runs.values():  # warm-up
        timed(fn, m, b, 3, Phases())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.blocks):
        for name, (fn, m, b) in runs.items():
            times[name].append(timed(fn, m, b, args.steps, phases[name]))

    if args.profile:
        for name, (fn, m, b) in runs.items():
            with torch.profiler.profile() as prof:
                timed(fn, m, b, args.steps, Phases())
            if rank == 0:
                print(f"\n# profile: {name}, {args.steps} steps (rank 0)")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    total_steps = args.steps * args.blocks
    results = []
    for name in runs:
        med = statistics.median(times[name])
        results.append(
            {
                "bench": "e2e_dlrm",
                "impl": name,
                "rank": rank,
                "world_size": world,
                "keep_freed_host_memory": kept_freed_memory,
                "batch_per_rank": args.batch_size,
                "tables": len(configs),
                "table_cap": args.table_size,
                "dim": args.dim,
                "bottom_mlp": list(args.bottom),
                "top_mlp": list(args.top),
                "steps_per_block": args.steps,
                "blocks": args.blocks,
                "samples_per_s": round(args.batch_size * args.steps / med, 1),
                "step_ms": round(1e3 * med / args.steps, 2),
                "phase_ms": {
                    k: round(1e3 * v / total_steps, 2) for k, v in phases[name].total.items()
                },
                "same_model": same,
            }
        )
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        for per_rank in gathered:
            for r in per_rank:
                print(json.dumps(r), flush=True)
        mine = {r["impl"]: r for r in gathered[0]}
        peer = mine["torchrec"]["samples_per_s"]
        print(
            "\n| implementation | samples/s per rank (median) | ratio vs TorchRec | step ms "
            "| forward / backward / dense / sparse ms |"
        )
        print("|---|---|---|---|---|")
        for name, r in mine.items():
            ph = r["phase_ms"]
            parts = " / ".join(
                str(ph.get(k, "-")) for k in ("forward", "backward", "dense_step", "sparse_step")
            )
            print(
                f"| {name} | {r['samples_per_s']} | {r['samples_per_s'] / peer:.2f}x | "
                f"{r['step_ms']} | {parts} |"
            )
    # Drop both models (and their communication state) while the group is still alive,
    # then tear the group down on every rank together.
    del runs, rc, tr, rc_dense, rc_sparse, tr_dense
    gc.collect()
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
    shutdown_distributed()  # after main(): its models no longer hold the group
