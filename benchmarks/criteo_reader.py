"""Criteo reader throughput: CriteoDataset (C++ parse of plain text lines) against the
per-record Python pipeline it replaces, on the same files in one process.

Writes random Criteo-like rows as TSV, gzipped TSV and Parquet (categoricals as strings,
and as dictionaries: pandas' category columns) into a temporary folder, then for each
file alternates, ``--repeats`` times:

- **recis**: ``CriteoDataset(path, batch_size, prefetch=0)``, iterated to the end;
- **python**: the previous pipeline: ``open_reader`` without a parser (one record per
  line: ``readline``, decode, split), ``RecordParser.parse_many`` per batch (per record
  where that declines), ``rows_to_batch``: what ``CriteoDataset`` did before the C++
  parser.

Reports rows/s (best of the repeats), the ratio, and the text's bytes/s as a fraction of
the rate at which this process reads the same file from the page cache (``read``
of 4 MiB blocks, best of the repeats): the limit a parser could reach.

``.gz`` is read with python-isal when it is installed (``recis[gzip]``); the
standard library's gzip is then timed too, as the row "tsv.gz, stdlib gzip".

Then rank 0's share of each one-file dataset on ``--world_sizes`` ranks (``rank=0,
world_size=W`` in this process, best of the repeats): the seconds it takes against
one rank reading the whole file, whose ideal is ``1/W``. TSV and Parquet are cut
between the ranks; a ``.gz`` file cannot be, so each rank decompresses all of it and
parses only its own lines (every W-th; before session 23 it parsed every line and kept
every W-th record).

Then the TSV read in order against read shuffled in windows of ``--shuffle_window``
batches (``CriteoDataset(shuffle_window=K)``), alternating: what the permutation costs.

Last, the same rows as ``--gz_files`` (``FILES:RANKS,...``) equal ``.gz`` files on that
many ranks, each rank read in this process: the records an epoch reads (the ranks in
step stop when the first runs out: ``RANKS`` times the smallest share) and the slowest
rank's seconds against the ideal, one rank's time for all the files over ``RANKS``.
Before session 23 whole files were dealt whole, so 3 files on 2 ranks read 2 of them
per epoch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/criteo_reader.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import tempfile
import time

import numpy as np

from recis.io import CriteoDataset, RecordParser, readers
from recis.io.batch import rows_to_batch
from recis.io.criteo import COLUMNS
from recis.io.readers import open_reader

SIZES = [100_000] * 26


def random_rows(n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n).astype(str)
    dense = rng.integers(-3, 5000, (n, 13)).astype(str)
    dense[rng.random((n, 13)) < 0.2] = ""
    cats = np.char.mod("%08x", rng.integers(0, 2**32, (n, 26), dtype=np.uint64))
    cats = cats.astype(object)
    cats[rng.random((n, 26)) < 0.15] = ""
    return [[label[i], *dense[i], *cats[i]] for i in range(n)]


def write_files(folder: str, rows: list[list[str]]) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = "".join("\t".join(r) + "\n" for r in rows).encode()
    paths = {"tsv": os.path.join(folder, "day.tsv"), "tsv.gz": os.path.join(folder, "day.tsv.gz")}
    with open(paths["tsv"], "wb") as f:
        f.write(text)
    with gzip.open(paths["tsv.gz"], "wb", compresslevel=6) as f:
        f.write(text)
    columns = list(zip(*rows, strict=True))
    table = {"label": pa.array(np.array(columns[0], dtype=np.int64))}
    for name, col in zip(COLUMNS[1:14], columns[1:14], strict=True):
        table[name] = pa.array([float(v) if v else None for v in col], pa.float64())
    for name, col in zip(COLUMNS[14:], columns[14:], strict=True):
        table[name] = pa.array([v or None for v in col], pa.string())
    paths["parquet"] = os.path.join(folder, "day.parquet")
    pq.write_table(pa.table(table), paths["parquet"], row_group_size=65536)
    # The categoricals as pandas' category columns are written (Arrow dictionaries).
    for name in COLUMNS[14:]:
        table[name] = table[name].dictionary_encode()
    paths["parquet, dictionary"] = os.path.join(folder, "day_dictionary.parquet")
    pq.write_table(pa.table(table), paths["parquet, dictionary"], row_group_size=65536)
    return paths


def recis_rows(path: str, batch_size: int, shuffle_window: int = 0) -> int:
    ds = CriteoDataset(path, batch_size, SIZES, prefetch=0, shuffle_window=shuffle_window)
    return sum(int(b["label"].numel()) for b in ds)


def python_rows(path: str, batch_size: int) -> int:
    parser = RecordParser(SIZES)
    n, pending = 0, []
    for record in open_reader(path, "auto"):
        pending.append(record[1])
        if len(pending) == batch_size:
            n += _python_batch(parser, pending)
            pending = []
    return n + (_python_batch(parser, pending) if pending else 0)


def _python_batch(parser: RecordParser, fields: list[list[object]]) -> int:
    rows = parser.parse_many(fields)
    if rows is None:
        parsed = [parser.parse(f) for f in fields]
        rows = (
            np.array([p[0] for p in parsed]),
            np.array([p[1] for p in parsed]),
            np.array([p[2] for p in parsed]),
        )
    return int(rows_to_batch(*rows)["label"].numel())


def share_seconds(
    path: str, world_size: int, batch_size: int, repeats: int, rank: int = 0
) -> tuple[int, float]:
    """Rows of ``rank``'s share of ``path`` on ``world_size`` ranks, best seconds to read
    it: of ``repeats`` epochs of one dataset, as in a job (the first also measures the
    files, which a dataset does once for files read whole)."""
    best, rows = float("inf"), 0
    ds = CriteoDataset(path, batch_size, SIZES, rank=rank, world_size=world_size, prefetch=0)
    for _ in range(repeats):
        start = time.perf_counter()
        rows = sum(int(b["label"].numel()) for b in ds)
        best = min(best, time.perf_counter() - start)
    return rows, best


def gz_files_case(
    folder: str, rows: list[list[str]], files: int, world_size: int, batch_size: int, repeats: int
) -> dict[str, object]:
    """``rows`` as ``files`` equal .gz files, read on ``world_size`` ranks (in turn)."""
    sub = os.path.join(folder, f"gz{files}")
    os.makedirs(sub, exist_ok=True)
    for k in range(files):
        part = rows[k * len(rows) // files : (k + 1) * len(rows) // files]
        with gzip.open(os.path.join(sub, f"part{k:03d}.tsv.gz"), "wb", compresslevel=6) as f:
            f.write("".join("\t".join(r) + "\n" for r in part).encode())
    _, whole = share_seconds(sub, 1, batch_size, repeats, rank=0)
    shares = [
        share_seconds(sub, world_size, batch_size, repeats, rank=r) for r in range(world_size)
    ]
    epoch_rows = world_size * min(n for n, _ in shares)
    slowest = max(t for _, t in shares)
    return {
        "bench": "criteo_reader_gz_files",
        "files": files,
        "world_size": world_size,
        "epoch_rows": epoch_rows,
        "of_records": round(epoch_rows / len(rows), 3),
        "slowest_rank_s": round(slowest, 3),
        "ideal_s": round(whole / world_size, 3),
        "x_ideal": round(slowest * world_size / whole, 2),
    }


def read_rate(path: str) -> float:
    """Bytes/s of reading the (uncompressed) file from the page cache."""
    start = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 22):
            pass
    return os.path.getsize(path) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--batch_size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--world_sizes", default="2,4,8", help="rank shares to time")
    p.add_argument("--shuffle_window", type=int, default=16, help="batches per window")
    p.add_argument("--gz_files", default="3:2,24:16,4:8", help="FILES:RANKS cases of .gz files")
    args = p.parse_args()
    world_sizes = [int(w) for w in args.world_sizes.split(",") if w]
    gz_cases = [tuple(int(x) for x in c.split(":")) for c in args.gz_files.split(",") if c]
    logging.getLogger("recis.io.dataset").setLevel(logging.ERROR)  # the split warnings
    with tempfile.TemporaryDirectory() as folder:
        records = random_rows(args.rows, seed=0)
        paths = write_files(folder, records)
        text_bytes = os.path.getsize(paths["tsv"])
        limit = max(read_rate(paths["tsv"]) for _ in range(args.repeats))
        results = []
        default_gzip = readers.GZIP_FILE
        cases = [(fmt, path, default_gzip) for fmt, path in paths.items()]
        if default_gzip is not gzip.GzipFile:  # python-isal installed: the stdlib too
            cases.insert(2, ("tsv.gz, stdlib gzip", paths["tsv.gz"], gzip.GzipFile))
        for fmt, path, gzip_file in cases:
            readers.GZIP_FILE = gzip_file
            times: dict[str, list[float]] = {"recis": [], "python": []}
            for _ in range(args.repeats):  # alternating
                for name, fn in (("recis", recis_rows), ("python", python_rows)):
                    start = time.perf_counter()
                    n = fn(path, args.batch_size)
                    times[name].append(time.perf_counter() - start)
                    assert n == args.rows, (name, fmt, n)
            readers.GZIP_FILE = default_gzip
            recis_s, python_s = min(times["recis"]), min(times["python"])
            rec = {
                "bench": "criteo_reader",
                "format": fmt,
                "rows": args.rows,
                "recis_rows_per_s": round(args.rows / recis_s),
                "python_rows_per_s": round(args.rows / python_s),
                "x_python": round(python_s / recis_s, 2),
                "text_MB_per_s": round(text_bytes / recis_s / 1e6, 1),
                "of_page_cache_read": round(text_bytes / recis_s / limit, 3),
            }
            results.append(rec)
            print(json.dumps(rec), flush=True)
        shares = []
        for fmt, path in paths.items():
            _, whole = share_seconds(path, 1, args.batch_size, args.repeats)
            for w in world_sizes:
                rows, seconds = share_seconds(path, w, args.batch_size, args.repeats)
                rec = {
                    "bench": "criteo_reader_share",
                    "format": fmt,
                    "world_size": w,
                    "rank0_rows": rows,
                    "rank0_s": round(seconds, 3),
                    "whole_file_s": round(whole, 3),
                    "of_whole": round(seconds / whole, 3),
                }
                shares.append(rec)
                print(json.dumps(rec), flush=True)
        shuffle: dict[int, list[float]] = {0: [], args.shuffle_window: []}
        for _ in range(args.repeats):  # alternating
            for window in shuffle:
                start = time.perf_counter()
                assert recis_rows(paths["tsv"], args.batch_size, window) == args.rows
                shuffle[window].append(time.perf_counter() - start)
        shuffled = {
            "bench": "criteo_reader_shuffle",
            "shuffle_window": args.shuffle_window,
            "in_order_rows_per_s": round(args.rows / min(shuffle[0])),
            "shuffled_rows_per_s": round(args.rows / min(shuffle[args.shuffle_window])),
        }
        print(json.dumps(shuffled), flush=True)
        gz_files = []
        for files, world_size in gz_cases:
            rec = gz_files_case(folder, records, files, world_size, args.batch_size, args.repeats)
            gz_files.append(rec)
            print(json.dumps(rec), flush=True)
    print(f"\npage-cache read of the TSV: {limit / 1e6:.0f} MB/s ({text_bytes / 1e6:.1f} MB)\n")
    print("| format | recis rows/s | python rows/s | x python | text MB/s | of page-cache read |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['format']} | {r['recis_rows_per_s']:,} | {r['python_rows_per_s']:,} | "
            f"{r['x_python']} | {r['text_MB_per_s']} | {r['of_page_cache_read']:.1%} |"
        )
    print(
        "\n| format | ranks | rank 0 rows | rank 0 s | one rank, whole file s | of whole | ideal |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in shares:
        print(
            f"| {r['format']} | {r['world_size']} | {r['rank0_rows']:,} | {r['rank0_s']} | "
            f"{r['whole_file_s']} | {r['of_whole']} | {1 / r['world_size']:.3f} |"
        )
    print(
        f"\nTSV in order: {shuffled['in_order_rows_per_s']:,} rows/s; shuffled in windows "
        f"of {shuffled['shuffle_window']} batches: {shuffled['shuffled_rows_per_s']:,} rows/s "
        f"({shuffled['shuffled_rows_per_s'] / shuffled['in_order_rows_per_s']:.2f}x)"
    )
    print("\n| .gz files | ranks | epoch reads | of records | slowest rank s | ideal s | x ideal |")
    print("|---|---|---|---|---|---|---|")
    for r in gz_files:
        print(
            f"| {r['files']} | {r['world_size']} | {r['epoch_rows']:,} | {r['of_records']:.1%} | "
            f"{r['slowest_rank_s']} | {r['ideal_s']} | {r['x_ideal']} |"
        )


if __name__ == "__main__":
    main()
