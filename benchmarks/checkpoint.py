"""Checkpoint save/load throughput: recis Saver vs torch.distributed.checkpoint vs torch.save.

Two gloo ranks each hold row-wise shards of a few float32 embedding tables plus one
per-element optimizer state of the same size (``--size-gb`` in total over both
ranks). Each method saves the same tensors with the same number of writer threads
per rank, fsync'ed (recis: ``Saver``; DCP: ``FileSystemWriter(thread_count=T,
sync_files=True)``; torch.save: one file per rank, then fsync). Methods alternate,
``--repeats`` times. Before each load the files are evicted from the page cache
(``posix_fadvise(DONTNEED)`` on clean, fsync'ed pages), so loads read the disk when
the kernel honours it. Throughput is reported in GB/s and as a fraction of the
machine's fsync'ed sequential write bandwidth, measured here first. recis also times
``verify`` (``python -m recis.framework.checkpoint PATH --verify``: rank 0 reads and
checks every file with the same number of threads, from the disk after an eviction).

Prints one JSON line per result and a markdown table.

    python benchmarks/checkpoint.py                 # default size fits free memory/disk
    python benchmarks/checkpoint.py --size-gb 4 --threads 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time

import torch
import torch.distributed as dist

from recis.distributed.host_memory import available_host_memory
from recis.framework.checkpoint.commit import find_checkpoint
from recis.framework.checkpoint.manifest import read_manifest
from recis.framework.checkpoint.storage import storage_for
from recis.framework.checkpoint.summary import verify
from recis.framework.checkpoint_manager import Saver
from recis.nn import EmbeddingBagConfig, filter_out_sparse_param
from recis.nn.table import EmbeddingTable
from recis.testing import run_distributed

WORLD = 2
DIM = 128
NUM_TABLES = 4
GB = 1e9


def default_size_gb(directory: str) -> float:
    """A size that fits: a sixth of available memory (shards + a loaded copy on both
    ranks), a tenth of free disk (several checkpoints), at most 4 GB."""
    avail = (available_host_memory() or 0) / GB
    disk = shutil.disk_usage(directory).free / GB
    return round(max(0.25, min(4.0, avail / 6, disk / 10)), 2)


def disk_write_bandwidth(directory: str, nbytes: int, threads: int) -> float:
    """Bytes/s of fsync'ed writes of ``nbytes`` (in 64 MiB chunks) split over ``threads`` files."""
    chunk = os.urandom(64 << 20)
    per = max(len(chunk), nbytes // threads)

    def write(i: int) -> None:
        path = os.path.join(directory, f"bw{i}.bin")
        with open(path, "wb", buffering=0) as f:
            done = 0
            while done < per:
                done += f.write(chunk)
            os.fsync(f.fileno())

    start = time.perf_counter()
    workers = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    for i in range(threads):
        os.remove(os.path.join(directory, f"bw{i}.bin"))
    return per * threads / elapsed


class Shards(torch.nn.Module):
    def __init__(self, rows_per_rank: int, rank: int) -> None:
        super().__init__()
        self.tables = torch.nn.ModuleDict()
        rows = rows_per_rank // NUM_TABLES
        for i in range(NUM_TABLES):
            cfg = EmbeddingBagConfig(f"t{i}", rows * WORLD, DIM, [f"f{i}"])
            self.tables[f"t{i}"] = EmbeddingTable(cfg, torch.rand(rows, DIM), rows * rank, 0)


class MomentState:
    """One per-element optimizer state tensor per table (like Adagrad's)."""

    def __init__(self, tables: dict[str, EmbeddingTable]) -> None:
        self.state = {n: {"sum": torch.rand_like(t.weight)} for n, t in tables.items()}

    def table_state(self, name: str) -> dict[str, torch.Tensor]:
        return self.state[name]

    def set_table_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        self.state[name] = state


def verify_checkpoint(root: str, threads: int) -> None:
    storage, root = storage_for(root)
    ckpt_dir = find_checkpoint(storage, root)
    verify(storage, ckpt_dir, read_manifest(storage, ckpt_dir), threads)


def _evict(directory: str) -> None:
    for base, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(base, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _timed(fn) -> float:
    dist.barrier()
    start = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - start


def _bench(directory: str, bytes_per_rank: int, threads: int, repeats: int) -> dict:
    import torch.distributed.checkpoint as dcp

    rank = dist.get_rank()
    rows_per_rank = bytes_per_rank // (2 * DIM * 4)
    model = Shards(rows_per_rank, rank)
    opt = MomentState(filter_out_sparse_param(model))
    flat = {}
    for name, t in model.tables.items():
        flat[f"{name}.r{rank}.weight"] = t.weight
        flat[f"{name}.r{rank}.sum"] = opt.state[name]["sum"]
    total = sum(t.numel() * t.element_size() for t in flat.values()) * WORLD

    def recis_save(path):
        Saver(model, opt, path, max_keep=1, concurrency=threads).save("ckpt")

    def recis_load(path):
        Saver(model, opt, path, concurrency=threads).load(path)

    def dcp_save(path):
        dcp.save(
            flat, storage_writer=dcp.FileSystemWriter(path, thread_count=threads, sync_files=True)
        )

    def dcp_load(path):
        dcp.load(flat, storage_reader=dcp.FileSystemReader(path))

    def torch_save(path):
        os.makedirs(path, exist_ok=True)
        file = os.path.join(path, f"rank{rank}.pt")
        with open(file, "wb") as f:
            torch.save(flat, f)
            f.flush()
            os.fsync(f.fileno())

    def torch_load(path):
        loaded = torch.load(os.path.join(path, f"rank{rank}.pt"), weights_only=True)
        for k, v in loaded.items():
            flat[k].copy_(v)

    # One Saver for all background saves, as a training job has: its host staging
    # buffers and its process group are set up by the first save and reused after.
    async_saver = Saver(
        model, opt, os.path.join(directory, "async"), max_keep=1, concurrency=threads
    )

    def recis_async_save(path):
        start = time.perf_counter()
        done = async_saver.save(os.path.basename(path).replace(" ", "_"), blocking=False)
        blocked.append(time.perf_counter() - start)
        async_saver.wait()
        if rank == 0:
            os.rename(done, path)  # where the load step looks for it

    def raw_write(path):
        # The disk's limit in situ: the same bytes, same threads, no format, fsync'ed.
        os.makedirs(path, exist_ok=True)
        keys = sorted(flat)

        def job(i):
            with open(os.path.join(path, f"r{rank}-{i}"), "wb", buffering=0) as f:
                for k in keys[i::threads]:
                    f.write(memoryview(flat[k].numpy()).cast("B"))
                os.fsync(f.fileno())

        workers = [threading.Thread(target=job, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def raw_read(path):
        keys = sorted(flat)
        for i in range(threads):
            with open(os.path.join(path, f"r{rank}-{i}"), "rb", buffering=0) as f:
                for k in keys[i::threads]:
                    f.readinto(memoryview(flat[k].numpy()).cast("B"))

    blocked: list[float] = []
    methods = {
        "raw fsync'ed write": (raw_write, raw_read),
        "recis": (recis_save, recis_load),
        "recis async": (recis_async_save, recis_load),
        "dcp": (dcp_save, dcp_load),
        "torch.save": (torch_save, torch_load),
    }
    times: dict[str, dict[str, list[float]]] = {m: {"save": [], "load": []} for m in methods}
    for rep in range(repeats):
        order = list(methods) if rep % 2 == 0 else list(reversed(methods))
        for name in order:
            save, load = methods[name]
            path = os.path.join(directory, f"{name}-{rep}")
            times[name]["save"].append(_timed(lambda save=save, path=path: save(path)))
            if rank == 0:
                _evict(path)
            times[name]["load"].append(_timed(lambda load=load, path=path: load(path)))
            if name == "recis":
                # `python -m recis.framework.checkpoint PATH --verify`: rank 0 reads all.
                if rank == 0:
                    _evict(path)
                times[name].setdefault("verify", []).append(
                    _timed(lambda path=path: rank == 0 and verify_checkpoint(path, threads))
                )
            dist.barrier()
            if rank == 0:
                shutil.rmtree(path, ignore_errors=True)
    return {"total_bytes": total, "times": times, "async_blocked": blocked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size-gb", type=float, default=None, help="model + optimizer state, both ranks"
    )
    parser.add_argument(
        "--threads", type=int, default=4, help="writer threads per rank (all methods)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="recis-ckpt-bench-", dir=args.dir)
    try:
        size_gb = args.size_gb or default_size_gb(directory)
        bw = max(
            disk_write_bandwidth(directory, int(min(size_gb, 2) * GB), 1),
            disk_write_bandwidth(directory, int(min(size_gb, 2) * GB), args.threads),
        )
        print(json.dumps({"bench": "disk_write_fsync", "GB_per_s": round(bw / GB, 3)}), flush=True)
        out = run_distributed(
            _bench,
            WORLD,
            directory,
            int(size_gb * GB / WORLD),
            args.threads,
            args.repeats,
            timeout=3600,
        )[0]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    total = out["total_bytes"]
    raw = statistics.median(out["times"]["raw fsync'ed write"]["save"])
    rows = []
    for name, phases in out["times"].items():
        for phase, ts in phases.items():
            t = statistics.median(ts)
            rec = {
                "bench": "checkpoint",
                "method": name,
                "phase": phase,
                "size_gb": round(total / GB, 3),
                "ranks": WORLD,
                "threads": args.threads,
                "seconds": round(t, 3),
                "GB_per_s": round(total / t / GB, 3),
                "fraction_of_disk_write_bw": round(total / t / bw, 3),
                "fraction_of_raw_write": round(raw / t, 3),
            }
            if name == "recis async" and phase == "save":
                rec["blocked_seconds"] = round(statistics.median(out["async_blocked"]), 3)
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    base = {(r["phase"]): r["seconds"] for r in rows if r["method"] == "dcp"}
    print(
        f"\nStandalone fsync'ed disk write: {bw / GB:.2f} GB/s; in-run raw write of the same "
        f"tensors: {total / raw / GB:.2f} GB/s; {total / GB:.2f} GB on {WORLD} ranks, "
        f"{args.threads} threads/rank, median of {args.repeats}\n"
    )
    print(
        "| method | phase | seconds | GB/s | of disk write bw | of in-run raw write | speed vs DCP |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        extra = f" (blocks {r['blocked_seconds']:.2f} s)" if "blocked_seconds" in r else ""
        vs_dcp = f"{base[r['phase']] / r['seconds']:.2f}x" if r["phase"] in base else "-"
        print(
            f"| {r['method']} | {r['phase']}{extra} | {r['seconds']:.2f} | {r['GB_per_s']:.2f} | "
            f"{r['fraction_of_disk_write_bw']:.0%} | {r['fraction_of_raw_write']:.0%} | {vs_dcp} |"
        )


if __name__ == "__main__":
    main()
