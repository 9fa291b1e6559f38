"""Every benchmark runs to the end on tiny shapes (all but gpu_check.sh, which needs a
GPU). Nothing is timed here (speed is measured by running them for real:
benchmarks/README.md); this keeps them working as the library changes under them."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

CASES = {
    "ab_builds": [
        *("ab_builds.py", str(ROOT), str(ROOT), "--rounds", "2", "--warmup", "0"),
        *("--processes", "1", "--tables", "2", "--rows", "1000", "--batch", "64"),
    ],
    "ab_builds_lookup": [
        *("ab_builds.py", str(ROOT), str(ROOT), "--rounds", "2", "--warmup", "0"),
        *("--processes", "1", "--tables", "2", "--rows", "1000", "--batch", "64"),
        *("--part", "lookup"),
    ],
    "ab_builds_route": [
        *("ab_builds.py", str(ROOT), str(ROOT), "--rounds", "2", "--warmup", "0"),
        *("--processes", "1", "--tables", "2", "--rows", "1000", "--batch", "64"),
        *("--part", "route", "--blocks", "3"),
    ],
    "criteo_reader": [
        "criteo_reader.py",
        *("--rows", "2000", "--repeats", "1", "--world_sizes", "2", "--gz_files", "3:2"),
    ],
    "checkpoint": ["checkpoint.py", "--size-gb", "0.01", "--repeats", "1", "--threads", "2"],
    "kernels": [
        "kernels.py",
        *("--tables", "2", "--rows", "1000", "--dims", "8", "--batch", "64"),
        *("--iters", "1", "--warmup", "0", "--batches", "1", "--optimizers", "sgd,adam"),
        *("--copy_mib", "16"),
    ],
    "update_order": [
        "update_order.py",
        *("--tables", "2", "--rows", "1000", "--batch", "64", "--iters", "1", "--warmup", "0"),
        *("--batches", "1"),
    ],
    "lookup_tables": ["lookup_tables.py", "--iters", "1", "--dims", "8"],
    "sgd_paths": ["sgd_paths.py", "--iters", "1"],
    "kernel_ops": ["kernel_ops.py"],
    "e2e": [
        *TORCHRUN,
        "e2e.py",
        *("--batch_size", "32", "--table_size", "500", "--dim", "8", "--steps", "1"),
        *("--blocks", "1", "--batches", "1"),
    ],
    "sharded_ebc": [
        *TORCHRUN,
        "sharded_ebc.py",
        *("--tables", "2", "--rows", "500", "--dim", "8", "--batch", "32", "--steps", "1"),
        *("--rounds", "1"),
    ],
}
NEEDS_TORCHREC = {"e2e", "sharded_ebc"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_to_the_end(name):
    if name in NEEDS_TORCHREC and importlib.util.find_spec("torchrec") is None:
        pytest.skip("compares against torchrec, which is not installed")
    args = [a if not a.endswith(".py") else str(BENCHMARKS / a) for a in CASES[name]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert results, done.stdout[-2000:]
