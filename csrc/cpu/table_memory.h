#pragma once
// Host memory for embedding tables and their optimizer state.
#include <ATen/ATen.h>

namespace recis {

// An uninitialised CPU tensor. One of at least 2 MiB is aligned to 2 MiB and advised
// to the kernel as transparent huge pages (Linux MADV_HUGEPAGE): lookups and updates
// touch random rows, and with 4 KiB pages nearly every row costs a TLB miss and a page
// walk (two-level under virtualisation). Without THP the advice is a no-op.
at::Tensor empty_table(at::IntArrayRef size, at::ScalarType dtype);

}  // namespace recis
