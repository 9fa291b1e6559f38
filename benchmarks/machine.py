"""What the benchmarks read off the machine they run on."""

from __future__ import annotations


def available_memory() -> int | None:
    """Bytes Linux reports as available (``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
