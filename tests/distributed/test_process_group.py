"""init_distributed under torchrun: a restarted job joins again; restarts across machines
with a shared store are warned of."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from recis.distributed.process_group import _restart_safe_store

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "distributed" / "restart_worker.py"


def test_workers_restarted_by_torchrun_join_again(tmp_path):
    # torchrun keeps its TCPStore over a restart: without a key prefix per attempt
    # the new workers read the old ones' gloo addresses and fail to connect or hang
    # (every try with --standalone on torch 2.13).
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    result = subprocess.run(
        [*torchrun, "--nproc_per_node=2", "--max_restarts=1", str(WORKER), str(tmp_path / "x")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # Two processes print to one pipe: their lines may run together.
    joined = sorted(re.findall(r"attempt \d: rank \d joined, sum \d", result.stdout))
    assert joined == [f"attempt {a}: rank {r} joined, sum 2" for a in (0, 1) for r in (0, 1)]


def test_restarts_across_machines_with_a_shared_store_are_warned_of(monkeypatch, caplog):
    # Two machines of two workers, torchrun sharing its store: no prefix can be agreed
    # on (each agent counts its own restarts), so rank 0 says what to set.
    for name, value in [
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_MAX_RESTARTS", "3"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("RANK", "0"),
    ]:
        monkeypatch.setenv(name, value)
    with caplog.at_level("WARNING", logger="recis.distributed.process_group"):
        assert _restart_safe_store(timedelta(seconds=1)) is None
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in caplog.text
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # what that setting does
    caplog.clear()
    assert _restart_safe_store(timedelta(seconds=1)) is None and caplog.text == ""
