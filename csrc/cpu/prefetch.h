#pragma once
// Software prefetch of every cache line of a row: random rows are latency-bound, so
// the kernels request rows a few ids ahead to keep several misses in flight.
#include <cstdint>

namespace recis {

template <typename T>
inline void prefetch_row(const T* row, int64_t n, bool write = false) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  if (write) {
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 1);
  } else {
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0);
  }
}

// Into L2 only (prefetcht2): requested further ahead than prefetch_row, so that the
// rows prefetch_row asks for later are on their way or already in L2.
template <typename T>
inline void prefetch_row_to_l2(const T* row, int64_t n) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 1);
}

}  // namespace recis
