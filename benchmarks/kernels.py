"""Kernel benchmark: pooled lookup forward + backward + fused sparse optimizer step.

Compares, in the same process and alternating iteration by iteration:
  * recis       - EmbeddingBagCollection (its tables on huge pages, one output written
                  by recis::pooled_lookup_tables, the gradient read in place) + a
                  recis.optim sparse optimizer (fused dedup + reduce + update kernel;
                  SGD without weight decay applies each id's gradient directly);
  * fbgemm      - FBGEMM SplitTableBatchedEmbeddingBagsCodegen on CPU with the same
                  fused optimizer (EXACT_ROWWISE_ADAGRAD / EXACT_SGD; FBGEMM's CPU path
                  has no ADAM, so Adam has no FBGEMM column);
  * torch       - plain PyTorch: F.embedding_bag forward, the gradient per unique row
                  with torch.unique + index_add_, the optimizer math on the gathered rows,
                  scattered back with index_copy_.
It also measures the machine's memory copy bandwidth (a large tensor copy, just before
each case) and reports the effective bandwidth of recis' update
step (bytes of rows and state read and written, plus grad_out read once) as a fraction
of the copy bandwidth measured before that case; on CPU also as a fraction of
memcpy's bandwidth (non-temporal stores: ~1.8x a tensor copy's on session 9's
host, the stricter reference), and the row-touch floor: the
time to read and write back, with no math, the same rows and state (random rows are
bound by memory latency, not by the copy bandwidth). It also times the step's
dedup alone (sorting and grouping the ids: the row-wise Adagrad op on zero-width
tables), the part of the step that moves no rows, and the effective bandwidth of the
rest of the step (the same bytes over the step's time less the dedup's) as a second
fraction of the copy bandwidth.

Prints one JSON line per result, then a markdown table.

    python benchmarks/kernels.py                  # 8 tables x 1M rows, dims 64 and 128
    python benchmarks/kernels.py --small          # a quick run
    python benchmarks/kernels.py --device cuda    # the CUDA kernels against FBGEMM's CUDA TBE
    python benchmarks/kernels.py --optimizers adam --dims 128 --no-torch   # fits 24 GiB

On CUDA every timing is taken after `torch.cuda.synchronize()`, the copy bandwidth is
that of device memory, and Adam gets an FBGEMM column (FBGEMM's CUDA TBE has ADAM).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import torch
import torch.nn.functional as F
from machine import memcpy_bandwidth

from recis.distributed.host_memory import available_host_memory
from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig, filter_out_sparse_param
from recis.ops import sparse_rowwise_adagrad_update
from recis.optim import SparseAdam, SparseRowWiseAdagrad, SparseSGD
from recis.sparse import KeyedJaggedTensor

LR, EPS, BETAS = 0.01, 1e-8, (0.9, 0.999)


def zipf_ids(rows: int, n: int, alpha: float, perm: torch.Tensor) -> torch.Tensor:
    """n ids with Zipf(alpha) popularity, hot ids scattered over the table by `perm`."""
    u = torch.rand(n, dtype=torch.float64)
    if alpha == 1.0:
        rank = torch.exp(u * torch.log(torch.tensor(float(rows))))
    else:
        # Inverse CDF of the continuous power law on [1, rows + 1).
        a = 1.0 - alpha
        rank = (1.0 + u * ((rows + 1.0) ** a - 1.0)) ** (1.0 / a)
    return perm[(rank.long() - 1).clamp_(0, rows - 1)]


def make_batches(args, dim: int) -> list[dict]:
    """`args.batches` batches on `args.device`: per table ids and offsets, FBGEMM's
    table-major layout, the KeyedJaggedTensor and the output gradient."""
    device = torch.device(args.device)
    batches = []
    perms = [torch.randperm(args.rows) for _ in range(args.tables)]
    for _ in range(args.batches):
        per_table = []
        for t in range(args.tables):
            lengths = torch.randint(
                max(0, args.pooling - 5), args.pooling + 6, (args.batch,), dtype=torch.long
            )
            offsets = torch.zeros(args.batch + 1, dtype=torch.long)
            offsets[1:] = lengths.cumsum(0)
            ids = zipf_ids(args.rows, int(offsets[-1]), args.zipf, perms[t])
            per_table.append((ids, offsets))
        # FBGEMM's layout: table-major ids, T * B + 1 offsets.
        all_ids = torch.cat([ids for ids, _ in per_table])
        all_lengths = torch.cat([o.diff() for _, o in per_table])
        all_offsets = torch.zeros(all_lengths.numel() + 1, dtype=torch.long)
        all_offsets[1:] = all_lengths.cumsum(0)
        grad = torch.randn(args.batch, args.tables * dim) * 1e-3
        kjt = KeyedJaggedTensor([f"f{t}" for t in range(args.tables)], all_ids, all_lengths)
        batch = {
            "tables": [(ids.to(device), o.to(device)) for ids, o in per_table],
            "ids": all_ids.to(device),
            "offsets": all_offsets.to(device),
            "kjt": kjt.to(device),
            "grad": grad.to(device),
        }
        batches.append(batch)
    return batches


def sync(device: torch.device) -> None:
    """Waits for the device's queued work, so that a timer read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(
    device: torch.device, mib: int = 1024, repeats: int = 5, allocations: int = 3
) -> float:
    """Bytes/s of a large tensor copy on `device` (read + write counted): the best of
    `repeats` copies in each of `allocations` pairs of buffers. A VM's memory need not
    all be equally fast: on a Zen 5 guest a 1 GiB buffer's copy ran at 43 or at 75
    GB/s by where its pages landed, and the machine's limit is the faster."""
    # Held together, so that each pair has pages of its own rather than the last one's.
    pairs = [
        (torch.ones(mib * 2**20 // 4, device=device), torch.empty(mib * 2**20 // 4, device=device))
        for _ in range(allocations)
    ]
    best = float("inf")
    for src, dst in pairs:
        dst.copy_(src)
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            dst.copy_(src)
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * mib * 2**20 / best


# --- recis ---


class Recis:
    name = "recis"

    def __init__(self, args, dim: int, optim: str, init: list[torch.Tensor]) -> None:
        self.device = torch.device(args.device)
        self.ebc = EmbeddingBagCollection(
            [EmbeddingBagConfig(f"t{i}", args.rows, dim, [f"f{i}"]) for i in range(len(init))],
            device=self.device,
        )
        with torch.no_grad():
            for table, w in zip(self.ebc.tables.values(), init, strict=True):
                table.weight.copy_(w)
        self.tables = filter_out_sparse_param(self.ebc)
        cls = {"rowwise_adagrad": SparseRowWiseAdagrad, "adam": SparseAdam, "sgd": SparseSGD}[optim]
        kw = {"eps": EPS} if optim != "sgd" else {}
        if optim == "adam":
            kw["betas"] = BETAS
        self.opt = cls(self.tables, lr=LR, **kw)
        self.step_times: list[float] = []

    def run(self, batch: dict) -> None:
        self.ebc(batch["kjt"]).values().backward(batch["grad"])
        sync(self.device)
        t0 = time.perf_counter()
        self.opt.step()
        sync(self.device)
        self.step_times.append(time.perf_counter() - t0)
        self.opt.zero_grad()


# --- FBGEMM TBE ---


class Fbgemm:
    name = "fbgemm"

    def __init__(self, args, dim: int, optim: str, init: list[torch.Tensor]) -> None:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )

        kind = {
            "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
            "sgd": EmbOptimType.EXACT_SGD,
            "adam": EmbOptimType.ADAM,  # CUDA only
        }[optim]
        if args.device == "cuda":
            location, compute = EmbeddingLocation.DEVICE, ComputeDevice.CUDA
        else:
            location, compute = EmbeddingLocation.HOST, ComputeDevice.CPU
        self.emb = SplitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[(args.rows, dim, location, compute) for _ in init],
            optimizer=kind,
            learning_rate=LR,
            eps=EPS,
            beta1=BETAS[0],
            beta2=BETAS[1],
            pooling_mode=PoolingMode.SUM,
        )
        with torch.no_grad():
            for w, src in zip(self.emb.split_embedding_weights(), init, strict=True):
                w.copy_(src)

    def run(self, batch: dict) -> None:
        out = self.emb(batch["ids"], batch["offsets"])
        out.backward(batch["grad"])  # the fused optimizer runs in backward


# --- plain torch ---


class PlainTorch:
    name = "torch"

    def __init__(self, args, dim: int, optim: str, init: list[torch.Tensor]) -> None:
        self.device = torch.device(args.device)
        self.weights = [w.to(self.device, copy=True) for w in init]
        self.optim = optim
        if optim == "rowwise_adagrad":
            self.states = [[torch.zeros(args.rows, device=self.device)] for _ in init]
        elif optim == "adam":
            self.states = [[torch.zeros_like(w), torch.zeros_like(w)] for w in self.weights]
            self.step = 0
        else:
            self.states = [[] for _ in init]

    def _update(self, weight: torch.Tensor, state: list[torch.Tensor], rows, g) -> None:
        w = weight.index_select(0, rows)
        if self.optim == "sgd":
            w.sub_(g, alpha=LR)
        elif self.optim == "rowwise_adagrad":
            s = state[0].index_select(0, rows).add_(g.pow(2).mean(dim=1))
            state[0].index_copy_(0, rows, s)
            w.sub_(g * (LR / (s.sqrt() + EPS))[:, None])
        else:
            m = state[0].index_select(0, rows).lerp_(g, 1 - BETAS[0])
            v = state[1].index_select(0, rows).mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
            state[0].index_copy_(0, rows, m)
            state[1].index_copy_(0, rows, v)
            bc1, bc2 = 1 - BETAS[0] ** self.step, 1 - BETAS[1] ** self.step
            w.addcdiv_(m, (v.sqrt() / bc2**0.5).add_(EPS), value=-LR / bc1)
        weight.index_copy_(0, rows, w)

    def run(self, batch: dict) -> None:
        weights = [w.detach().requires_grad_(False) for w in self.weights]
        dim = weights[0].shape[1]
        outs = [
            F.embedding_bag(ids, w, offsets[:-1], mode="sum")
            for w, (ids, offsets) in zip(weights, batch["tables"], strict=True)
        ]
        torch.cat(outs, dim=1)  # forward output (the loss's input)
        grads = batch["grad"].split(dim, dim=1)
        if self.optim == "adam":
            self.step += 1
        for t, (ids, offsets) in enumerate(batch["tables"]):
            rows, inverse = torch.unique(ids, return_inverse=True)
            bags = torch.arange(offsets.numel() - 1, device=self.device)
            bag = torch.repeat_interleave(bags, offsets.diff())
            g = torch.zeros(rows.numel(), dim, device=self.device)
            g.index_add_(0, inverse, grads[t].index_select(0, bag))
            self._update(self.weights[t], self.states[t], rows, g)


def measure(
    impls: list, batches: list[dict], warmup: int, iters: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per iteration of each implementation, run alternately."""
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for i in range(warmup + iters):
        batch = batches[i % len(batches)]
        for impl in impls:
            sync(device)
            t0 = time.perf_counter()
            impl.run(batch)
            sync(device)
            if i >= warmup:
                times[impl.name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def profile(impl, batches: list[dict], device: torch.device, case: str, iters: int = 4) -> None:
    """Prints impl's top ops over `iters` iterations, by device time on a GPU."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(iters):
            impl.run(batches[i % len(batches)])
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n# profile: {impl.name}, {case}, {iters} iterations")
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))


def row_touch_floor(impl: Recis, batches: list[dict], repeats: int = 3) -> float:
    """Median seconds to read and write back, without any math, exactly the rows (and
    per-row state) one step updates: ``index_select`` then ``index_copy_`` of each
    table's unique ids on recis's own tables. Random rows are latency-bound, far below
    the copy bandwidth, so this, not the copy bandwidth, is the reference for an update
    of those rows (a fused kernel can beat it: torch makes two passes)."""
    times = []
    for i in range(repeats):
        batch = batches[i % len(batches)]
        rows = [torch.unique(ids) for ids, _ in batch["tables"]]
        states = [impl.opt.table_state(name) for name in impl.tables]
        sync(impl.device)
        t0 = time.perf_counter()
        for table, state, r in zip(impl.tables.values(), states, rows, strict=True):
            for t in [table.weight, *(v for v in state.values() if v.dim() > 0)]:
                t.index_copy_(0, r, t.index_select(0, r))
        sync(impl.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dedup_seconds(batch: dict, rows: int, device: torch.device) -> float:
    """Seconds of the dedup alone over one step's tables, as the step runs it: the
    row-wise Adagrad op on zero-width tables of `rows` rows checks and deduplicates every
    table's ids (on CPU several tables at once over the threads; on CUDA all in one sort)
    and then has no row to update, so the rest of the step is the gradient pack and the
    per-row update."""
    n = len(batch["tables"])
    weights = [torch.empty(rows, 0, device=device) for _ in range(n)]
    sums = [torch.empty(rows, device=device) for _ in range(n)]
    ids, offsets = (list(field) for field in zip(*batch["tables"], strict=True))
    grads = [torch.zeros(batch["grad"].shape[0], 0, device=device)] * n
    sync(device)
    t0 = time.perf_counter()
    sparse_rowwise_adagrad_update(weights, sums, ids, offsets, [None] * n, grads, [False] * n,
                                  LR, EPS)  # fmt: skip
    sync(device)
    return time.perf_counter() - t0


def dedup_time(batches: list[dict], rows: int, device: torch.device, repeats: int = 3) -> float:
    """Median of `dedup_seconds` over `repeats` of the batches."""
    times = [dedup_seconds(batches[i % len(batches)], rows, device) for i in range(repeats)]
    return statistics.median(times)


def update_bytes(
    batches: list[dict], dim: int, optim: str, tables: int, batch: int
) -> tuple[float, float]:
    """Bytes the update must move per step (median batch): rows + state read and
    written once per unique row, grad_out read once."""
    uniques = [sum(torch.unique(ids).numel() for ids, _ in b["tables"]) for b in batches]
    u = statistics.median(uniques)
    row = dim * 4
    per_row = {"sgd": 2 * row, "rowwise_adagrad": 2 * row + 8, "adam": 6 * row}[optim]
    return u * per_row + tables * batch * row, u


def needed_memory(args, dim: int, optim: str, implementations: int) -> tuple[int, int]:
    """Bytes of host and device memory: the initial copy the tables are made from (host)
    plus each of `implementations` sets of tables and optimizer state (where they run)."""
    table = args.tables * args.rows * dim * 4
    state = {"sgd": 0, "rowwise_adagrad": args.tables * args.rows * 4, "adam": 2 * table}[optim]
    tables = implementations * (table + state)
    if args.device == "cuda":
        return table, tables
    return table + tables, 0


def check_memory(args, dim: int, optim: str, with_fbgemm: bool) -> str | None:
    """Why this case does not fit the machine, or None when it does; says so when
    leaving out the plain-torch peer (--no-torch) would make it fit."""
    implementations = 1 + with_fbgemm + (not args.no_torch)
    have = available_host_memory()
    free = torch.cuda.mem_get_info()[0] if args.device == "cuda" else None

    def shortfall(n: int) -> str | None:
        host, device = needed_memory(args, dim, optim, n)
        if have is not None and host > 0.9 * have:
            return f"needs ~{host / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available"
        if free is not None and device > 0.9 * free:
            return f"needs ~{device / 2**30:.1f} GiB of GPU memory, {free / 2**30:.1f} GiB free"
        return None

    why = shortfall(implementations)
    if why is not None and not args.no_torch and shortfall(implementations - 1) is None:
        why += " (fits with --no-torch, which leaves out the plain-torch peer)"
    return why


def percent(result: dict, key: str) -> str:
    """result[key] as a percentage, "n/a" where it was not measured."""
    fraction = result[key]
    return "n/a" if fraction is None else f"{fraction:.0%}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dims", default="64,128")
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--pooling", type=int, default=20, help="mean ids per bag")
    p.add_argument("--zipf", type=float, default=1.05)
    p.add_argument("--optimizers", default="rowwise_adagrad,adam,sgd")
    p.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-fbgemm", action="store_true")
    p.add_argument(
        "--no-torch",
        action="store_true",
        help="leave out the plain-torch peer (its tables too: for shapes that do not fit)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--small", action="store_true", help="4 tables x 100k rows, batch 2048")
    p.add_argument(
        "--copy_mib",
        type=int,
        default=1024,
        help="MiB per buffer of the copy-bandwidth measurements (far above the caches)",
    )
    p.add_argument(
        "--profile", action="store_true", help="print recis's top ops per case (torch.profiler)"
    )
    args = p.parse_args(argv)
    if args.small:
        args.tables, args.rows, args.batch, args.iters = 4, 100_000, 2048, 5
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU here")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    memcpy_bw = (
        memcpy_bandwidth(torch.get_num_threads(), args.copy_mib) if args.device == "cpu" else None
    )
    if memcpy_bw is not None:
        print(json.dumps({"metric": "memcpy_bandwidth_GBps", "value": round(memcpy_bw / 1e9, 2),
                          "threads": torch.get_num_threads()}))  # fmt: skip
    fbgemm = not args.no_fbgemm and importlib.util.find_spec("fbgemm_gpu") is not None
    if not args.no_fbgemm and not fbgemm:
        print(json.dumps({"note": "fbgemm_gpu is not installed: no FBGEMM column"}))
    rows_out = []
    bandwidths = []
    for dim in [int(d) for d in args.dims.split(",")]:
        batches = make_batches(args, dim)
        nnz = statistics.median(sum(ids.numel() for ids, _ in b["tables"]) for b in batches)
        for optim in args.optimizers.split(","):
            # FBGEMM's CPU TBE has no ADAM; its CUDA one has.
            with_fbgemm = fbgemm and (optim != "adam" or args.device == "cuda")
            too_big = check_memory(args, dim, optim, with_fbgemm)
            if too_big:
                skip = {"benchmark": "sparse_fwd_bwd_step", "optimizer": optim, "dim": dim,
                        "skipped": too_big}  # fmt: skip
                print(json.dumps(skip), flush=True)
                continue
            # Measured next to each case (before its tables exist): a shared host's speed
            # can move by 2x within minutes, and a fraction is only as good as its reference.
            case_bw = copy_bandwidth(device, args.copy_mib)
            bandwidths.append(case_bw)
            init = [torch.empty(args.rows, dim).uniform_(-0.01, 0.01) for _ in range(args.tables)]
            impls: list = [Recis(args, dim, optim, init)]
            if with_fbgemm:
                impls.append(Fbgemm(args, dim, optim, init))
            if not args.no_torch:
                impls.append(PlainTorch(args, dim, optim, init))
            del init
            secs = measure(impls, batches, args.warmup, args.iters, device)
            step = statistics.median(impls[0].step_times[args.warmup :])
            if args.profile:  # after the step's median: these iterations run profiled
                profile(impls[0], batches, device, f"{optim}, dim {dim}")
            nbytes, uniq = update_bytes(batches, dim, optim, args.tables, args.batch)
            floor = row_touch_floor(impls[0], batches)
            dedup = dedup_time(batches, args.rows, device)
            result = {
                "benchmark": "sparse_fwd_bwd_step",
                "optimizer": optim,
                "dim": dim,
                "tables": args.tables,
                "rows": args.rows,
                "batch": args.batch,
                "ids_per_step": nnz,
                "unique_rows_per_step": uniq,
                "device": args.device,
                "threads": torch.get_num_threads(),
                **{f"{n}_ms": round(s * 1e3, 2) for n, s in secs.items()},
                **{f"{n}_ids_per_s": round(nnz / s) for n, s in secs.items()},
                "recis_step_ms": round(step * 1e3, 2),
                "recis_update_GBps": round(nbytes / step / 1e9, 2),
                "copy_bandwidth_GBps": round(case_bw / 1e9, 2),
                "recis_update_bw_fraction": round(nbytes / step / case_bw, 3),
                # The same bytes over the step less its dedup, which moves no rows: the
                # pass over the rows alone (an estimate: the dedup timed on its own).
                "recis_rows_pass_bw_fraction": (
                    round(nbytes / (step - dedup) / case_bw, 3)
                    if dedup is not None and dedup < step
                    else None
                ),
                "recis_update_memcpy_fraction": (
                    round(nbytes / step / memcpy_bw, 3) if memcpy_bw is not None else None
                ),
                "recis_dedup_ms": round(dedup * 1e3, 2) if dedup is not None else None,
                "row_touch_floor_ms": round(floor * 1e3, 2),
                "recis_step_over_floor": round(step / floor, 2),
            }
            for n, s in secs.items():
                if n != "recis":
                    result[f"speedup_vs_{n}"] = round(s / secs["recis"], 2)
            print(json.dumps(result), flush=True)
            rows_out.append(result)
            del impls
    print()
    print(
        "| optimizer | dim | recis ms | fbgemm ms | torch ms | recis ids/s | x fbgemm | x torch "
        "| recis step ms | of which dedup ms | update GB/s | of copy BW "
        "| of copy BW, dedup excluded | of memcpy BW | row-touch floor ms | step / floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        print(
            f"| {r['optimizer']} | {r['dim']} | {r['recis_ms']} | {r.get('fbgemm_ms', 'n/a')} "
            f"| {r.get('torch_ms', 'n/a')} | {r['recis_ids_per_s']:.3g} "
            f"| {r.get('speedup_vs_fbgemm', 'n/a')} | {r.get('speedup_vs_torch', 'n/a')} "
            f"| {r['recis_step_ms']} | {r['recis_dedup_ms'] or 'n/a'} | {r['recis_update_GBps']} "
            f"| {r['recis_update_bw_fraction']:.0%} | {percent(r, 'recis_rows_pass_bw_fraction')} "
            f"| {percent(r, 'recis_update_memcpy_fraction')} "
            f"| {r['row_touch_floor_ms']} "
            f"| {r['recis_step_over_floor']} |"
        )
    where = "cuda" if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    if bandwidths:
        low, high = min(bandwidths) / 1e9, max(bandwidths) / 1e9
        print(
            f"\nmemory copy bandwidth: {low:.2f}-{high:.2f} GB/s over the run ({where}); each "
            "case's fraction is of the one measured just before it"
        )
        if high > 1.15 * low:
            print(
                f"note: the copy bandwidth moved by {high / low - 1:.0%} during the run: the "
                "host's speed changed, and cases measured apart compare only roughly"
            )
            # The conservative reading: a case measured in a slow minute got a low reference.
            of_best = ", ".join(
                f"{r['optimizer']} dim {r['dim']} {r['recis_update_GBps'] * 1e9 / max(bandwidths):.0%}"
                for r in rows_out
            )
            print(f"the update as a fraction of the run's best copy, {high:.2f} GB/s: {of_best}")
    if memcpy_bw is not None:
        print(f"memcpy bandwidth: {memcpy_bw / 1e9:.2f} GB/s ({where})")


if __name__ == "__main__":
    main()
