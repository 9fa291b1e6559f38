"""Single-op timings of the CPU kernels, under each instruction set they are built for.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kernel_ops.py

- ``pooled_lookup`` against ``torch.nn.functional.embedding_bag`` (FBGEMM's kernel
  inside torch) on one 1M x 64 table, 8192 bags of 20 ids: ns per id for uniform ids
  (rows come from memory), for ids among 1,000 rows (rows in cache) and for Zipf(1.05)
  ids as in kernels.py (hot rows cached, the rest from memory); and on
  DLRM's shape, 13 tables of 100k x 16 with one id per bag, 1024 bags.
- ``dot_interaction`` (DLRM, 1024 samples, 26 embeddings + the dense vector of dim 16)
  against its torch reference (bmm + triangle + concatenation), forward and
  forward + backward, ms per call.
- the fused updates (row-wise Adagrad, SGD) on eight 100k x 64 tables, 2048 bags of
  0-20 uniform ids, fresh ids every step: ms per table.
- the dedup, through ``unique_row_grads`` with a gradient of dim 1, on kernels.py's
  ids (8192 bags of ~20 Zipf ids over 1M rows): ns per id for the two-digit sort of
  32-bit values that a table of up to 2^22 rows gets, against the 64-bit keys that a
  larger one gets (the same ids, declared to come from a table of 2^22 + 1 rows),
  alternating. Both include the reduce of a one-float gradient per id, which is not
  negligible: under ``perf record`` (1 thread, AMD EPYC Zen 4, session 25) it took
  about as many samples as the sort's passes together, so a change to the sort moves
  the figure by about half its own effect.
- ``route`` (the sharded input dist's routing of a batch into its send buffer) against
  the same buffer from plain torch ops (``searchsorted``, a stable sort of the ids by
  the place of their bag, then each dest's lengths and ids), which the run also checks
  it equals: ns per id, every table of 100k rows split in 2 or 8 even row blocks on as
  many dests: DLRM's 26 features of one id, 1024 samples; sharded_ebc.py's 8 tables of
  0-20 ids per bag, 1024 samples; 8 tables of 15-25 ids, 8192 samples.

Medians; the ISAs alternate within one run. Prints one JSON line per result.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from kernels import zipf_ids

import recis  # noqa: F401  (registers torch.ops.recis)
from recis import ops
from recis.ops import available_cpu_isas, reference


def median_seconds(fn: Callable[[int], None], repeats: int, warmup: int = 2) -> float:
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn(i)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def lookup_results(isas: list[str]) -> list[dict]:
    rows, dim, bags, per_bag = 1_000_000, 64, 8192, 20
    weight = torch.empty(rows, dim).uniform_(-0.01, 0.01)
    offsets = torch.arange(0, bags * per_bag + 1, per_bag)
    out = []
    zipf = zipf_ids(rows, bags * per_bag, 1.05, torch.randperm(rows))
    for ids_name, ids in [
        ("uniform", torch.randint(0, rows, (bags * per_bag,))),
        ("cached_1000_rows", torch.randint(0, 1000, (bags * per_bag,))),
        ("zipf_1.05", zipf),
    ]:
        timings = {}
        for isa in isas:
            torch.ops.recis.cpu_isa(isa)
            timings[f"recis_{isa}"] = median_seconds(
                lambda _, ids=ids: ops.pooled_lookup(weight, ids, offsets), 10
            )
        timings["embedding_bag"] = median_seconds(
            lambda _, ids=ids: F.embedding_bag(ids, weight, offsets[:-1], mode="sum"), 10
        )
        out.append(
            {"op": "pooled_lookup", "ids": ids_name}
            | {f"{k}_ns_per_id": round(v * 1e9 / ids.numel(), 1) for k, v in timings.items()}
        )
    return out


def dlrm_lookup_results(isas: list[str]) -> list[dict]:
    rows, dim, bags, tables = 100_000, 16, 1024, 13
    weights = [torch.empty(rows, dim).uniform_(-0.01, 0.01) for _ in range(tables)]
    offsets = torch.arange(bags + 1)
    ids = [[torch.randint(0, rows, (bags,)) for _ in weights] for _ in range(8)]

    def recis_step(i: int) -> None:
        for w, t_ids in zip(weights, ids[i % 8], strict=True):
            ops.pooled_lookup(w, t_ids, offsets)

    def embedding_bag_step(i: int) -> None:
        for w, t_ids in zip(weights, ids[i % 8], strict=True):
            F.embedding_bag(t_ids, w, offsets[:-1], mode="sum")

    timings = {}
    for isa in isas:
        torch.ops.recis.cpu_isa(isa)
        timings[f"recis_{isa}"] = median_seconds(recis_step, 40)
    timings["embedding_bag"] = median_seconds(embedding_bag_step, 40)
    result = {"op": "pooled_lookup", "ids": "dlrm_13_tables_1_id_per_bag"}
    return [
        result | {f"{k}_ns_per_id": round(v * 1e9 / (bags * tables), 1) for k, v in timings.items()}
    ]


def interaction_results(isas: list[str]) -> list[dict]:
    batch, features, dim = 1024, 26, 16
    dense = torch.randn(batch, dim, requires_grad=True)
    emb = torch.randn(batch, features * dim, requires_grad=True)
    grad = torch.randn(batch, dim + (features + 1) * features // 2)
    impls = {f"recis_{isa}": ops.dot_interaction for isa in isas}
    impls["torch_reference"] = reference.dot_interaction
    out = []
    for phase in ["forward", "forward_backward"]:
        result = {"op": "dot_interaction", "phase": phase}
        for name, fn in impls.items():
            if name.startswith("recis_"):
                torch.ops.recis.cpu_isa(name.removeprefix("recis_"))

            def call(_: int, fn=fn, backward=phase == "forward_backward") -> None:
                y = fn(dense, emb)
                if backward:
                    y.backward(grad)

            result[f"{name}_ms"] = round(median_seconds(call, 40) * 1e3, 3)
        out.append(result)
    return out


def update_results(isas: list[str]) -> list[dict]:
    rows, dim, bags, tables, steps = 100_000, 64, 2048, 8, 16
    weights = [torch.empty(rows, dim).uniform_(-0.01, 0.01) for _ in range(tables)]
    sums = [torch.zeros(rows) for _ in range(tables)]
    grad = torch.randn(bags, dim) * 1e-3
    batches = []
    for _ in range(steps):
        offsets = torch.zeros(bags + 1, dtype=torch.long)
        offsets[1:] = torch.randint(0, 21, (bags,)).cumsum(0)
        batches.append((torch.randint(0, rows, (int(offsets[-1]),)), offsets))

    n = len(weights)

    def rowwise(i: int) -> None:
        ids, offsets = batches[i % steps]
        torch.ops.recis.sparse_rowwise_adagrad_update(
            weights, sums, [ids] * n, [offsets] * n, [None] * n, [grad] * n, [False] * n,
            0.01, 1e-8, 0.0,
        )  # fmt: skip

    def sgd(i: int) -> None:
        ids, offsets = batches[i % steps]
        torch.ops.recis.sparse_sgd_update(
            weights, [ids] * n, [offsets] * n, [None] * n, [grad] * n, [False] * n, 0.01, 0.0
        )

    out = []
    for name, fn in [("rowwise_adagrad", rowwise), ("sgd", sgd)]:
        result = {"op": f"sparse_{name}_update", "ids_per_table": int(batches[0][0].numel())}
        for isa in isas:
            torch.ops.recis.cpu_isa(isa)
            result[f"recis_{isa}_ms_per_table"] = round(
                median_seconds(fn, 3 * steps) * 1e3 / tables, 3
            )
        out.append(result)
    return out


def dedup_results() -> list[dict]:
    rows, bags, tables = 1_000_000, 8192, 8
    batches = []
    for _ in range(tables):
        offsets = torch.zeros(bags + 1, dtype=torch.long)
        offsets[1:] = torch.randint(15, 26, (bags,)).cumsum(0)
        batches.append((zipf_ids(rows, int(offsets[-1]), 1.05, torch.randperm(rows)), offsets))
    grad = torch.randn(bags, 1)
    nnz = sum(ids.numel() for ids, _ in batches)
    sorts = {"two_digits_32_bit": rows, "keys_64_bit": (1 << 22) + 1}
    times: dict[str, list[float]] = {name: [] for name in sorts}
    for i in range(12):
        for name, declared_rows in sorts.items():
            t0 = time.perf_counter()
            for ids, offsets in batches:
                ops.unique_row_grads(ids, offsets, None, grad, False, declared_rows)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    result = {"op": "dedup (unique_row_grads, dim 1)", "ids": nnz}
    for name, ts in times.items():
        result[f"{name}_ns_per_id"] = round(statistics.median(ts) / nnz * 1e9, 2)
    result["ratio"] = round(statistics.median(times["two_digits_32_bit"]) /
                            statistics.median(times["keys_64_bit"]), 3)  # fmt: skip
    return [result]


def torch_route(values: torch.Tensor, lengths: torch.Tensor, batch: int, plan: ops.RoutingPlan):
    """``ops.route``'s send_ints in plain torch ops, for plans of one slot per block:
    each id's block by ``searchsorted``, its bag's place among all slots' bags, a stable
    sort of the ids by that place, then every dest's lengths and ids gathered."""
    keys = plan.key_table.numel()
    table, feature = (
        plan.key_table.repeat_interleave(batch),
        plan.key_feature.repeat_interleave(batch),
    )
    key_of_id = torch.repeat_interleave(
        torch.arange(keys * batch), lengths, output_size=values.numel()
    )
    t = table[key_of_id]
    bounds = plan.table_bounds[t]
    block = torch.searchsorted(bounds, values.unsqueeze(1), right=True).squeeze(1) - 1
    slot = plan.table_slots[t, block, 0]
    bag_base = torch.cat(
        [torch.zeros(1, dtype=torch.int64), (plan.slot_features * batch).cumsum(0)]
    )
    place = bag_base[slot] + feature[key_of_id] * batch + key_of_id % batch
    order = torch.sort(place, stable=True).indices
    counts = torch.bincount(place, minlength=int(bag_base[-1]))
    local = (values - bounds.gather(1, block.unsqueeze(1)).squeeze(1))[order]
    slot_ids = torch.zeros(plan.slot_features.numel(), dtype=torch.int64).index_add_(
        0, slot, torch.ones_like(slot)
    )
    dests = plan.slot_dest
    parts, id_start = [], 0
    for d in dests.unique().tolist():
        mine = (dests == d).nonzero().squeeze(1)
        first, last = int(mine[0]), int(mine[-1]) + 1
        n = int(slot_ids[first:last].sum())
        parts += [counts[bag_base[first] : bag_base[last]], local[id_start : id_start + n]]
        id_start += n
    return torch.cat(parts)


def row_blocks_plan(tables: int, rows: int, blocks: int) -> ops.RoutingPlan:
    """``tables`` one-feature tables of ``rows`` rows (key t feeds table t), each split
    in ``blocks`` even row blocks, block k on dest k (slots numbered dest-major)."""
    bounds = torch.linspace(0, rows, blocks + 1).long().tolist()
    return ops.routing_plan(
        [(t, 0) for t in range(tables)],
        [ops.TableRoute(bounds, [[k * tables + t] for k in range(blocks)]) for t in range(tables)],
        [1] * (tables * blocks),
        [k for k in range(blocks) for _ in range(tables)],
    )


def route_results() -> list[dict]:
    rows, out = 100_000, []
    cases = [
        ("DLRM", 26, 1024, (1, 1), 2),
        ("sharded_ebc", 8, 1024, (0, 20), 2),
        ("sharded_ebc", 8, 1024, (0, 20), 8),
        ("long bags", 8, 8192, (15, 25), 8),
    ]
    for name, tables, batch, (low, high), blocks in cases:
        lengths = torch.randint(low, high + 1, (tables * batch,))
        values = torch.randint(0, rows, (int(lengths.sum()),))
        plan = row_blocks_plan(tables, rows, blocks)
        got = ops.route(values, lengths, None, batch, plan).send_ints
        assert torch.equal(got, torch_route(values, lengths, batch, plan))
        case = (values, lengths, batch, plan)
        timings = {
            "recis": median_seconds(lambda _, c=case: ops.route(c[0], c[1], None, c[2], c[3]), 20),
            "torch": median_seconds(lambda _, c=case: torch_route(*c), 20),
        }
        out.append(
            {"op": "route", "shape": name, "tables": tables, "batch": batch}
            | {"ids": values.numel(), "blocks": blocks}
            | {f"{k}_ns_per_id": round(v * 1e9 / values.numel(), 2) for k, v in timings.items()}
            | {"ratio": round(timings["recis"] / timings["torch"], 3)}
        )
    return out


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    isas = available_cpu_isas()
    active = torch.ops.recis.cpu_isa()
    try:
        results = (
            lookup_results(isas)
            + dlrm_lookup_results(isas)
            + interaction_results(isas)
            + update_results(isas)
            + dedup_results()
            + route_results()
        )
        for result in results:
            print(json.dumps(result), flush=True)
    finally:
        torch.ops.recis.cpu_isa(active)


if __name__ == "__main__":
    main()
