"""SGD-path A/B: the path `recis.sparse_sgd_update` picks for SGD without weight decay
against its dedup path, on the same tables and batches.

Without decay the CPU kernel may apply each occurrence on its own instead of
deduplicating the ids first (`docs/DECISIONS.md`, "SGD without weight decay"); any
weight decay forces the dedup path. So the same op run with `weight_decay=0` and with
a decay too small to change a float32 weight (1e-30) times the chosen path against the
dedup, alternating call by call. A ratio below 1 means the rule chose the faster path;
1.00 where both run the dedup. Ids are Zipf, as in `kernels.py`.

    python benchmarks/sgd_paths.py                  # 1 thread, tables of 1k to 200k rows
    python benchmarks/sgd_paths.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from kernels import zipf_ids

import recis.ops as ops

# (rows, dim, bags, mean ids per bag): small tables hit by more occurrences than fit
# in cache, on both sides of the 2048-row and 16 MiB thresholds, and a large one.
SHAPES = [
    (1_000, 16, 8192, 80),
    (1_000, 64, 8192, 20),
    (2_000, 128, 8192, 20),
    (4_000, 16, 8192, 80),
    (10_000, 64, 8192, 20),
    (30_000, 128, 8192, 20),
    (50_000, 64, 8192, 20),
    (100_000, 64, 2048, 20),
    (200_000, 64, 8192, 20),
]
TINY_DECAY = 1e-30


def time_paths(rows: int, dim: int, bags: int, per_bag: int, iters: int) -> dict:
    weight = torch.empty(rows, dim).uniform_(-0.01, 0.01)
    lengths = torch.randint(max(0, per_bag - 5), per_bag + 6, (bags,))
    offsets = torch.zeros(bags + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    ids = zipf_ids(rows, int(offsets[-1]), 1.05, torch.randperm(rows))
    grad = torch.randn(bags, dim) * 1e-3
    times: dict[float, list[float]] = {0.0: [], TINY_DECAY: []}
    for _ in range(iters + 2):
        for decay, ts in times.items():
            t0 = time.perf_counter()
            ops.sparse_sgd_update([weight], [ids], [offsets], [None], [grad], [False], 1e-3, decay)
            ts.append(time.perf_counter() - t0)
    chosen, dedup = (statistics.median(ts[2:]) for ts in times.values())
    return {
        "benchmark": "sgd_paths",
        "rows": rows,
        "dim": dim,
        "ids": ids.numel(),
        "occurrence_MiB": round(ids.numel() * dim * 4 / 2**20, 1),
        "table_MiB": round(rows * dim * 4 / 2**20, 1),
        "threads": torch.get_num_threads(),
        "chosen_ms": round(chosen * 1e3, 3),
        "dedup_ms": round(dedup * 1e3, 3),
        "chosen_over_dedup": round(chosen / dedup, 2),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for shape in SHAPES:
        result = time_paths(*shape, args.iters)
        print(json.dumps(result), flush=True)
        results.append(result)
    print("\n| rows | dim | ids | occurrences MiB | table MiB | chosen ms | dedup ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rows']} | {r['dim']} | {r['ids']} | {r['occurrence_MiB']} | {r['table_MiB']} "
            f"| {r['chosen_ms']} | {r['dedup_ms']} | {r['chosen_over_dedup']} |"
        )
    print(f"\n{args.threads} thread(s)")


if __name__ == "__main__":
    main()
