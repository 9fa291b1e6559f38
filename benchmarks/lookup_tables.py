"""A/B: one ``pooled_lookup_tables`` call for a collection's tables against the Python
loop of one-table ``pooled_lookup`` calls it replaced (each into its column block of
the same output), alternating call by call on kernels.py's batches (8 tables x 1M rows,
batch 8192, ~20 Zipf(1.05) ids per bag, sum pooling). Prints the median ms of each and
their ratio per dim.

    .venv/bin/python benchmarks/lookup_tables.py --threads 1
    .venv/bin/python benchmarks/lookup_tables.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from kernels import make_batches, sync

from recis import ops


def per_table(weights: list[torch.Tensor], batch: dict, out: torch.Tensor) -> None:
    """The loop it replaced: one pooled_lookup per table, into its column block."""
    dim = weights[0].shape[1]
    for t, (ids, offsets) in enumerate(batch["tables"]):
        block = out[:, t * dim : (t + 1) * dim]
        ops.pooled_lookup(weights[t], ids, offsets, None, ops.SUM, out=block)


def batched(weights: list[torch.Tensor], batch: dict, out: torch.Tensor) -> None:
    n = len(weights)
    ids, offsets = (list(field) for field in zip(*batch["tables"], strict=True))
    ops.pooled_lookup_tables(weights, ids, offsets, [None] * n, [False] * n, [1] * n, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dims", default="64,128")
    p.add_argument("--iters", type=int, default=26)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = argparse.Namespace(tables=8, rows=1_000_000, batch=8192, pooling=20, zipf=1.05,
                               batches=2, device=args.device)  # fmt: skip
    device = torch.device(args.device)
    for dim in (int(d) for d in args.dims.split(",")):
        batches = make_batches(shape, dim)
        weights = [
            ops.empty_table((shape.rows, dim), torch.float32, device).uniform_(-0.01, 0.01)
            for _ in range(shape.tables)
        ]
        out = torch.empty(shape.batch, shape.tables * dim, device=device)
        times: dict[str, list[float]] = {"per_table": [], "batched": []}
        for i in range(args.iters + 4):
            order = [("batched", batched), ("per_table", per_table)]
            for name, fn in order if i % 2 else order[::-1]:
                sync(device)
                t0 = time.perf_counter()
                fn(weights, batches[i % len(batches)], out)
                sync(device)
                if i >= 4:
                    times[name].append(time.perf_counter() - t0)
        loop, one = (statistics.median(times[k]) for k in ("per_table", "batched"))
        print(json.dumps({"bench": "lookup_tables", "device": args.device,
                          "threads": args.threads, "dim": dim,
                          "per_table_ms": round(loop * 1e3, 2), "batched_ms": round(one * 1e3, 2),
                          "batched_over_per_table": round(one / loop, 3)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
