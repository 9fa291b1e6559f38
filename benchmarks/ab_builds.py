"""A/B of two builds of recis on the sparse optimizer step (or the dedup, the pooled
lookup or the input dist's routing, alone), in processes that step alternately.

A shared host's speed can move by 2x within minutes, so two builds timed one after the
other compare the host's phases as much as the builds. Here each build runs in its own
persistent process (its tables, optimizer and batches made once, as in
`benchmarks/kernels.py`); round after round each process runs forward + backward +
`opt.step()` once, the order rotated every round, and the step alone is timed. Two
processes of one build differ by a few percent (where their tables landed in memory), so
each build runs in `--processes` of them (2 by default) and a round's ratio is B's total
step time over A's. The result is the median of the per-round ratios B / A and the median
step time of each build. `--part dedup` times the step's sort and grouping of the ids
alone instead (the row-wise Adagrad op on zero-width tables, as kernels.py's dedup
column): no rows are made, so it needs little memory. It calls the update op with a list
of tables, so both builds must have that form (session 15 on). `--part lookup` times
`recis.ops.pooled_lookup` over each table of a batch (tables on huge pages, one call per
table, `--zipf 0` for uniform ids). `--part route` times `recis.ops.route` of a batch's
tables, each split into `--blocks` even row blocks on as many dests (the row-wise input
dist's routing into its send buffer; `--batch 1024 --pooling 10 --zipf 0` are
sharded_ebc.py's bags); both builds must have that op (session 28 on).

A and B are directories that hold a built `recis` package, e.g. an older commit:

    git worktree add /tmp/recis-old <commit>
    (cd /tmp/recis-old && /path/to/this/checkout/.venv/bin/python setup.py -q build_ext --inplace)
    .venv/bin/python benchmarks/ab_builds.py /tmp/recis-old . --optimizer sgd --threads 1

Give the same directory twice to see the harness's own spread on the host. Every process
holds its tables at once: the issue's shape needs ~3.8 GiB per process for row-wise
Adagrad at dim 64 (while it sets up; `kernels.needed_memory`), ~7.6 GiB for Adam.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

from kernels import needed_memory

from recis.distributed.host_memory import available_host_memory

BENCHMARKS = Path(__file__).resolve().parent

# Runs in each process: argv = [package_dir, json_args]. Prints "ready" once set up, then
# one time (seconds) of the part measured per line read from stdin.
WORKER = r"""
import argparse, json, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(1, sys.argv[3])
import torch
import recis
import kernels

a = argparse.Namespace(**json.loads(sys.argv[2]))
if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(0)
batches = kernels.make_batches(a, a.dim)
if a.part == "step":
    init = [torch.empty(a.rows, a.dim).uniform_(-0.01, 0.01) for _ in range(a.tables)]
    impl = kernels.Recis(a, a.dim, a.optimizer, init)
    del init
elif a.part == "lookup":
    tables = [recis.ops.empty_table((a.rows, a.dim), torch.float32).uniform_(-0.01, 0.01)
              for _ in range(a.tables)]
elif a.part == "route":
    from kernel_ops import row_blocks_plan
    plan = row_blocks_plan(a.tables, a.rows, a.blocks)
    for b in batches:
        b["values"] = torch.cat([ids for ids, _ in b["tables"]])
        b["lengths"] = torch.cat([offsets.diff() for _, offsets in b["tables"]])
print("ready", recis.__file__, flush=True)
for i, _ in enumerate(sys.stdin):
    batch = batches[i % len(batches)]
    if a.part == "step":
        impl.run(batch)  # forward + backward + the timed step
        print(impl.step_times[-1], flush=True)
    elif a.part == "lookup":
        t0 = time.perf_counter()
        for table, (ids, offsets) in zip(tables, batch["tables"]):
            recis.ops.pooled_lookup(table, ids, offsets)
        print(time.perf_counter() - t0, flush=True)
    elif a.part == "route":
        t0 = time.perf_counter()
        recis.ops.route(batch["values"], batch["lengths"], None, a.batch, plan)
        print(time.perf_counter() - t0, flush=True)
    else:
        # Twice, the first untimed, as forward + backward precede a timed step: the
        # process that ran just before leaves its OpenMP threads spinning for a while.
        kernels.dedup_seconds(batch, a.rows, torch.device("cpu"))
        print(kernels.dedup_seconds(batch, a.rows, torch.device("cpu")), flush=True)
"""


def start(package: Path, args: argparse.Namespace) -> subprocess.Popen:
    if not (package / "recis").is_dir():
        raise SystemExit(f"ab_builds.py: {package} holds no recis package")
    config = json.dumps({**vars(args), "device": "cpu"}, default=str)
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(package.resolve()), config, str(BENCHMARKS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",  # so that neither process imports a recis from its working directory
    )
    line = proc.stdout.readline().split()
    if not line or line[0] != "ready":
        proc.kill()
        raise SystemExit(f"ab_builds.py: the process for {package} failed to start (see above)")
    print(json.dumps({"build": str(package), "recis": line[1]}), flush=True)
    return proc


def step(build: str, proc: subprocess.Popen) -> float:
    try:
        proc.stdin.write("step\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
    except BrokenPipeError:
        line = ""
    if not line:
        raise SystemExit(f"ab_builds.py: build {build}'s process exited (see above)")
    return float(line)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("a", type=Path, help="directory holding build A's recis package")
    p.add_argument("b", type=Path, help="directory holding build B's recis package")
    p.add_argument("--part", choices=["step", "dedup", "lookup", "route"], default="step",
                   help="what is timed: the optimizer step, the dedup alone "
                        "(the update op on zero-width tables), the pooled lookups "
                        "of a batch (one op call per table), or the row-wise input "
                        "dist's routing of a batch (one ops.route call, every table "
                        "in --blocks even row blocks)")  # fmt: skip
    p.add_argument("--blocks", type=int, default=2, help="row blocks for --part route")
    p.add_argument("--optimizer", choices=["rowwise_adagrad", "adam", "sgd"],
                   default="rowwise_adagrad")  # fmt: skip
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--processes", type=int, default=2, help="processes per build")
    p.add_argument("--warmup", type=int, default=2, help="rounds left out of the medians")
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--pooling", type=int, default=20, help="mean ids per bag")
    p.add_argument("--zipf", type=float, default=1.05)
    p.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    args = p.parse_args(argv)
    if args.rounds < args.warmup + 2:
        p.error(f"--rounds ({args.rounds}) must exceed --warmup ({args.warmup}) by 2 or more")
    if args.processes < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    # Each process: its tables and state, and the initial copy they are made from.
    one_process, _ = needed_memory(argparse.Namespace(**vars(args), device="cpu"), args.dim,
                                   args.optimizer, implementations=1)  # fmt: skip
    table_bytes = 4 * args.tables * args.rows * args.dim
    need = {"step": one_process, "lookup": table_bytes}.get(args.part, 0) * 2 * args.processes
    have = available_host_memory()
    if have is not None and need > 0.9 * have:
        p.error(
            f"{2 * args.processes} processes need ~{need / 2**30:.1f} GiB, "
            f"{have / 2**30:.1f} GiB available (try --processes 1)"
        )

    # Set up one at a time: two processes initialising tables at once would be slower.
    procs = [(build, start(path, args)) for _ in range(args.processes)
             for build, path in (("A", args.a), ("B", args.b))]  # fmt: skip
    times: dict[str, list[float]] = {"A": [], "B": []}
    ratios = []
    try:
        for i in range(args.rounds):
            k = i % len(procs)
            total = {"A": 0.0, "B": 0.0}
            for build, proc in procs[k:] + procs[:k]:
                total[build] += step(build, proc)
            if i >= args.warmup:
                for build in total:
                    times[build].append(total[build] / args.processes)
                ratios.append(total["B"] / total["A"])
    finally:
        for _, proc in procs:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            proc.wait()
    result = {
        "benchmark": f"ab_builds_{args.part}",
        "optimizer": args.optimizer,
        "dim": args.dim,
        "threads": args.threads,
        "processes_per_build": args.processes,
        "rounds": len(ratios),
        "a_ms": round(statistics.median(times["A"]) * 1e3, 2),
        "b_ms": round(statistics.median(times["B"]) * 1e3, 2),
        "b_over_a": round(statistics.median(ratios), 3),
        "b_over_a_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)[::2]],
    }
    print(json.dumps(result))
    what = {
        "step": f"{args.optimizer} dim {args.dim}",
        "lookup": f"lookup dim {args.dim}",
        "route": f"route into {args.blocks} blocks",
    }.get(args.part, "dedup")
    print(
        f"\n{what}, {args.threads} thread(s): {args.part} A "
        f"{result['a_ms']} ms, B {result['b_ms']} ms; B / A {result['b_over_a']} "
        f"(median of {len(ratios)} rounds, quartiles {result['b_over_a_quartiles']})"
    )


if __name__ == "__main__":
    main()
