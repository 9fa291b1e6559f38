#pragma once
// Software prefetch of every cache line of a row: random rows are latency-bound, so
// the kernels request rows a few ids ahead to keep several misses in flight.
//
// On x86-64 the prefetches are asm statements, not __builtin_prefetch: GCC 12 dropped
// the builtin's row prefetches from every instantiation of the Adam update (all widths,
// both ISAs; the other optimizers' loops kept theirs, as objdump shows). With them the
// Adam step at the kernels benchmark's shape went from 121 to 72 ms (dim 64, 1
// thread, session 10; two builds, far beyond the ~10-30% spread between processes).
#include <cstdint>

namespace recis {

// Into every cache level.
inline void prefetch_line(const char* p) {
#if defined(__x86_64__) && defined(__GNUC__)
  asm volatile("prefetcht0 %0" : : "m"(*p));
#else
  __builtin_prefetch(p, 0, 3);
#endif
}

// Into L2 (and L3), not L1.
inline void prefetch_line_to_l2(const char* p) {
#if defined(__x86_64__) && defined(__GNUC__)
  asm volatile("prefetcht2 %0" : : "m"(*p));
#else
  __builtin_prefetch(p, 0, 1);
#endif
}

template <typename T>
inline void prefetch_row(const T* row, int64_t n) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  for (int64_t off = 0; off < bytes; off += 64) prefetch_line(p + off);
}

// Requested further ahead than prefetch_row, so that the rows prefetch_row asks for
// later are on their way or already in L2.
template <typename T>
inline void prefetch_row_to_l2(const T* row, int64_t n) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  for (int64_t off = 0; off < bytes; off += 64) prefetch_line_to_l2(p + off);
}

}  // namespace recis
