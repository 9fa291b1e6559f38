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

// kL1: into every cache level. kL2: into L2 (and L3), not L1 - requested further ahead
// than a kL1 prefetch, so that the rows it asks for later are on their way or in L2.
enum class PrefetchTo { kL1, kL2 };

// Requests the cache line at p.
template <PrefetchTo kTo = PrefetchTo::kL1>
inline void prefetch_line(const char* p) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (kTo == PrefetchTo::kL1) {
    asm volatile("prefetcht0 %0" : : "m"(*p));
  } else {
    asm volatile("prefetcht2 %0" : : "m"(*p));
  }
#else
  __builtin_prefetch(p, 0, kTo == PrefetchTo::kL1 ? 3 : 1);
#endif
}

// Requests every cache line that row[0, n) touches. A row that does not start on a
// line (odd widths, or any row of a misaligned buffer) spans one line more than its
// size suggests: stepping from the row's start would leave its last line to a demand
// miss (row-wise Adagrad step, 8 x 1M rows of dim 100, 1 thread: 0.97x the time with
// that line requested; in-process A/B, session 12).
template <PrefetchTo kTo = PrefetchTo::kL1, typename T>
inline void prefetch_row(const T* row, int64_t n) {
  const auto start = reinterpret_cast<uintptr_t>(row);
  const char* p = reinterpret_cast<const char*>(start & ~uintptr_t{63});
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T)) + static_cast<int64_t>(start & 63);
  for (int64_t off = 0; off < bytes; off += 64) prefetch_line<kTo>(p + off);
}

// The same for a row of kBytes (a multiple of 64) that starts on a cache line: a
// constant number of lines, so the loop unrolls into that many prefetches.
template <int64_t kBytes, typename T>
inline void prefetch_aligned_row(const T* row) {
  static_assert(kBytes % 64 == 0);
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < kBytes; off += 64) prefetch_line(p + off);
}

}  // namespace recis
