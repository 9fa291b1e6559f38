"""Prefetcher: items read ahead on a thread, stopped on close and at interpreter exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recis.io.prefetch import Prefetcher

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT.parent / "shared" / "data" / "criteo_sample.txt"


def test_items_errors_and_close():
    with Prefetcher(iter(range(5)), depth=2) as p:
        assert list(p) == [0, 1, 2, 3, 4]

    def failing():
        yield 1
        raise OSError("disk gone")

    p = Prefetcher(failing(), depth=1)
    assert next(p) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(p)
    endless = Prefetcher(iter(int, 1), depth=2)  # never ends
    endless.close()
    assert not endless.alive
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Prefetcher(iter([]), depth=0)


@pytest.mark.skipif(not SAMPLE.exists(), reason="needs ../shared/data/criteo_sample.txt")
def test_a_dataset_left_mid_iteration_at_exit_does_not_abort_the_process():
    # The producer thread frees tensors as it reads ahead; had Python ended it as a
    # daemon thread at exit, inside libtorch, the process would abort (exit code 134,
    # "terminate called without an active exception").
    script = f"""
        from recis.io import CriteoDataset
        it = iter(CriteoDataset({str(SAMPLE)!r}, 16, [1000] * 26))
        next(it)
        print("left it running")
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "left it running\n"
