"""Update-order A/B: a sparse optimizer step that updates the tables last to first
(`SparseOptimizer.step`'s order) against one that updates them first to last.

The lookup reads the tables first to last, so the last tables read may still have their
rows in cache when the step begins. Both optimizers share one EmbeddingBagCollection
and run alternately, forward + backward + step per iteration, on `kernels.py`'s
batches (Zipf ids); the first-to-last order is the same optimizer built from the
tables in reverse. Prints one JSON line per order and the ratio.

    python benchmarks/update_order.py                  # issue shape, dim 64, row-wise Adagrad
    python benchmarks/update_order.py --dim 128 --optimizer sgd
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from kernels import EPS, LR, make_batches

from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig, filter_out_sparse_param
from recis.optim import SparseRowWiseAdagrad, SparseSGD


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--pooling", type=int, default=20, help="mean ids per bag")
    p.add_argument("--zipf", type=float, default=1.05)
    p.add_argument("--optimizer", choices=["rowwise_adagrad", "sgd"], default="rowwise_adagrad")
    p.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.device = "cpu"  # make_batches' device
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = make_batches(args, args.dim)
    ebc = EmbeddingBagCollection(
        [EmbeddingBagConfig(f"t{i}", args.rows, args.dim, [f"f{i}"]) for i in range(args.tables)]
    )
    tables = filter_out_sparse_param(ebc)
    cls, kw = {
        "rowwise_adagrad": (SparseRowWiseAdagrad, {"lr": LR, "eps": EPS}),
        "sgd": (SparseSGD, {"lr": LR}),
    }[args.optimizer]
    orders = {
        "last_to_first": cls(tables, **kw),
        "first_to_last": cls(dict(reversed(tables.items())), **kw),
    }
    times: dict[str, list[float]] = {name: [] for name in orders}
    for i in range(args.warmup + args.iters):
        for k, (name, opt) in enumerate(orders.items()):
            batch = batches[(2 * i + k) % len(batches)]
            ebc(batch["kjt"]).values().backward(batch["grad"])
            t0 = time.perf_counter()
            opt.step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            opt.zero_grad()
    step = {name: statistics.median(ts) for name, ts in times.items()}
    for name, secs in step.items():
        print(json.dumps({"benchmark": "update_order", "order": name, "optimizer": args.optimizer,
                          "dim": args.dim, "step_ms": round(secs * 1e3, 2)}))  # fmt: skip
    ratio = step["last_to_first"] / step["first_to_last"]
    print(f"last-to-first step / first-to-last step: {ratio:.3f}")


if __name__ == "__main__":
    main()
