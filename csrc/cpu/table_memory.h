#pragma once
// Host memory for embedding tables, their optimizer state and per-step buffers.
#include <ATen/ATen.h>

namespace recis {

// An uninitialised CPU tensor. One of at least 2 MiB is aligned to 2 MiB and advised
// to the kernel as transparent huge pages (Linux MADV_HUGEPAGE): lookups and updates
// touch random rows, and with 4 KiB pages nearly every row costs a TLB miss and a page
// walk (two-level under virtualisation). Without THP the advice is a no-op. When such a
// tensor is freed its memory is kept (bounded) for the next one of the same size.
at::Tensor empty_table(at::IntArrayRef size, at::ScalarType dtype);

// Bytes of freed buffers held for reuse.
int64_t table_memory_cached_bytes();

// Makes glibc's malloc keep what a training step frees for the next step instead of
// returning it to the OS, which then faults it in and zeroes it again: blocks up to
// 32 MiB come from the heap (not a fresh mapping each), and up to
// trim_threshold_bytes of free heap top stay mapped. Returns false, changing nothing,
// where the C library is not glibc.
bool keep_freed_host_memory(int64_t trim_threshold_bytes);

}  // namespace recis
