"""empty_table: table memory on huge pages when it is large enough; keep_freed_host_memory:
malloc keeps what each step frees."""

import platform
import re
from pathlib import Path

import pytest
import torch

from recis import ops
from tests.ops.helpers import PAGES_PER_BUFFER, step_buffers

HUGE_PAGE = 2 << 20
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _smaps_entry(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds `address`."""
    fields: dict[str, str] | None = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            if fields is not None:
                return fields
            lo, hi = int(head[1], 16), int(head[2], 16)
            fields = {} if lo <= address < hi else None
        elif fields is not None:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    if fields is None:
        raise AssertionError(f"no mapping holds {address:#x}")
    return fields


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_shape_dtype_and_contents_round_trip(dtype):
    t = ops.empty_table((300_000, 7), dtype)
    assert t.shape == (300_000, 7) and t.dtype == dtype and t.is_contiguous()
    src = torch.randn(300_000, 7).to(dtype)
    t.copy_(src)
    assert torch.equal(t, src)
    assert torch.equal(t.clone(), src)


def test_large_tables_are_aligned_to_a_huge_page():
    assert ops.empty_table((HUGE_PAGE // 4,)).data_ptr() % HUGE_PAGE == 0
    assert ops.empty_table((100_000, 64)).data_ptr() % HUGE_PAGE == 0


def test_small_and_empty_tables():
    assert ops.empty_table((3, 4)).shape == (3, 4)
    assert ops.empty_table((0, 16)).numel() == 0
    with pytest.raises(RuntimeError, match="negative size"):
        ops.empty_table((-1, 4))


@pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages"
)
def test_large_tables_are_advised_as_huge_pages():
    t = ops.empty_table((100_000, 64))
    t.zero_()
    assert _smaps_entry(t.data_ptr()).get("THPeligible") == "1"


def test_other_devices_get_plain_empty():
    t = ops.empty_table((4, 2), torch.float32, device="meta")
    assert t.device.type == "meta" and t.shape == (4, 2)


def test_freed_buffers_are_reused_without_aliasing_live_ones():
    # A collection's pooled output is allocated every step; freed buffers are kept for
    # the next one of the same size, never handed out while a tensor still holds them.
    shape = (HUGE_PAGE // 4 + 1,)  # two huge pages
    live = [ops.empty_table(shape).fill_(i) for i in range(3)]
    assert len({t.data_ptr() for t in live}) == 3
    freed = live.pop().data_ptr()
    again = ops.empty_table(shape)
    assert again.data_ptr() == freed  # taken back from the free list
    again.fill_(7)
    assert [float(t[0]) for t in live] == [0.0, 1.0] and float(live[1][-1]) == 1.0


def test_the_reuse_cache_is_bounded():
    cap = 512 << 20
    for mib in range(2, 260, 16):  # ~8 GiB freed in all, sizes up to 258 MiB
        ops.empty_table((mib << 18,)).fill_(1.0)
        assert torch.ops.recis.table_memory_cached_bytes() <= cap
    big = ops.empty_table((300 << 18,))  # 300 MiB: larger than any buffer kept
    before = torch.ops.recis.table_memory_cached_bytes()
    del big
    assert torch.ops.recis.table_memory_cached_bytes() == before


GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="malloc's policy is set on glibc only")
def test_kept_host_memory_is_not_faulted_in_again_every_step():
    default_in_heap, _ = step_buffers("import recis", steps=0)
    kept_in_heap, kept_faults = step_buffers(
        "from recis import ops\nassert ops.keep_freed_host_memory()"
    )
    # By default a fresh process maps a block this large on its own (and unmaps it when
    # freed); kept, it comes from the heap, whose freed top stays mapped.
    assert not default_in_heap
    assert kept_in_heap
    assert kept_faults < PAGES_PER_BUFFER, kept_faults


@pytest.mark.parametrize("bad", [0, -1, 2**31])
def test_keep_freed_host_memory_rejects_a_bad_threshold(bad):
    with pytest.raises(RuntimeError, match=r"trim_threshold_bytes must be in \[1, 2\^31 - 1\]"):
        ops.keep_freed_host_memory(bad)


@pytest.mark.parametrize("bad", [1.5, True, "256"])
def test_keep_freed_host_memory_wants_an_int(bad):
    with pytest.raises(TypeError, match="trim_threshold_bytes must be an int"):
        ops.keep_freed_host_memory(bad)
