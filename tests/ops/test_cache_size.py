"""The cache size the sparse updates read, and their L2-prefetch threshold."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import recis  # noqa: F401  (loads the ops)
from tests.ops.helpers import l2_prefetch_threshold

CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _sysfs_last_level_cache() -> int:
    """The largest data or unified cache level's size, read here independently."""
    best_level, size = 0, 0
    for index in sorted(CACHE.glob("index*")):
        if (index / "type").read_text().strip() == "Instruction":
            continue
        level = int((index / "level").read_text())
        text = (index / "size").read_text().strip()
        nbytes = int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)
        if level > best_level and nbytes > 0:
            best_level, size = level, nbytes
    return size


@pytest.mark.skipif(not CACHE.is_dir(), reason="no Linux sysfs cache description")
def test_last_level_cache_is_the_one_linux_describes():
    assert torch.ops.recis.last_level_cache_bytes() == _sysfs_last_level_cache()


def test_threshold_defaults_to_half_the_last_level_cache():
    # A fresh process: tests here may have set the threshold.
    code = (
        "import recis, torch; ops = torch.ops.recis; "
        "print(ops.last_level_cache_bytes(), ops.l2_prefetch_threshold())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cache, threshold = map(int, out.stdout.split())
    assert threshold == (cache // 2 if cache > 0 else 64 << 20)


def test_threshold_is_set_and_restored():
    before = torch.ops.recis.l2_prefetch_threshold()
    with l2_prefetch_threshold(12345):
        assert torch.ops.recis.l2_prefetch_threshold() == 12345
    assert torch.ops.recis.l2_prefetch_threshold() == before


def test_a_negative_threshold_is_rejected():
    before = torch.ops.recis.l2_prefetch_threshold()
    with pytest.raises(RuntimeError, match="set must be >= 0"):
        torch.ops.recis.l2_prefetch_threshold(-5)
    assert torch.ops.recis.l2_prefetch_threshold() == before
