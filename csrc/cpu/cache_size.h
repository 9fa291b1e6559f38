#pragma once
// When the sparse updates also prefetch rows into L2: only when the rows they touch
// cannot be expected in the last-level cache. Rows a step updates were read by its
// forward lookup shortly before; while all of the step's tables (and their optimizer
// state) fit in the cache, most of those rows are still there and an L2 prefetch far
// ahead only adds work; once they do not, the rows come from memory and requesting
// them into L2 early keeps more misses in flight.
#include <cstdint>

namespace recis {

// The size of the CPU's largest data (or unified) cache level as Linux reports it
// (/sys/devices/system/cpu/cpu0/cache), 0 when it cannot be read. Not sysconf: glibc
// reads it from CPUID, which under KVM reported 320 MiB for a 32 MiB L3 (session 24).
int64_t last_level_cache_bytes();

// The bytes of tables and optimizer state of one update call above which its rows are
// also prefetched into L2. set >= 0 sets it (0: always; tests and A/B runs), -1 only
// reads; returns the value in use. The default is half the last-level cache, or 64 MiB
// when its size is unknown.
int64_t l2_prefetch_threshold(int64_t set = -1);

}  // namespace recis
