#pragma once
// Deduplication of a SparseGrad's ids on CPU: groups the occurrences of each unique
// id so that one thread can reduce a row's gradient and update it alone.
//
// Each position j is sorted as the pair (id, item), where the item is j's bag or j
// itself (Occurrence), by an LSD radix sort over the id bits only (stable, digits of
// at most 11 bits), which orders the pairs by (id, j); an id twice in one bag gives
// two equal pairs by bag, which contribute the same gradient either way. Memory is
// O(nnz), never O(table rows): the result (RowSegments) per table of a call, kept by
// the calling thread, and the sort's buffers (SortScratch) per thread, all reused
// across calls (cpu/scratch.h). Two sorts:
//
// - ids of a table of up to 2^22 rows, whose items fit in 32 bits beside a digit, in
//   one pass (up to 2^11 rows) or two over 32-bit values (sort_by_two_digits): each
//   pass writes beside the item the digit it did not sort by; the digit it sorted by
//   is implied by the bucket a position falls in. Nothing 64-bit is built or moved,
//   and the first pass reads the ids themselves: 0.85-0.89x the time per id of the
//   64-bit sort below (benchmarks/kernel_ops.py, "dedup": 8 x 164k Zipf ids over 1M
//   rows, Intel host, session 9). The two digits are as equal as the id's bits allow
//   (10 + 10 rather than 11 + 9): fewer buckets to clear and scan, 0.92-0.96x the time
//   for 1,024 ids, 0.97-1.0x for more (a temporary switch, alternating in one process);
// - any other: one 64-bit key per position (id << item_bits | item), as many passes
//   as the largest id needs (sort_keys).
//
// Items are 32-bit: at most 2^32 bags (and 2^32 ids with per-sample weights) per call.
//
// Large batches are split into one part per thread: each pass histograms and
// scatters its parts in parallel, and the parts' cursors are laid out in part order,
// so the result is the same as the serial sort's for any number of threads.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/common.h"
#include "cpu/prefetch.h"
#include "cpu/scratch.h"

namespace recis {

// What the dedup records of each occurrence of an id. Its bag is all that an
// unweighted gradient needs, and is read straight from the sorted keys; the position
// (to read a per-sample weight) costs a gather from position to bag afterwards.
enum class Occurrence { kBag, kPosition };

struct RowSegments {
  int64_t num_unique = 0, nnz = 0;
  Occurrence item_is = Occurrence::kBag;
  Scratch<int64_t> unique_ids;  // [num_unique], ascending
  Scratch<int64_t> seg;         // [num_unique + 1] starts into the items
  // [nnz] each occurrence's bag or position (in the bits of item_mask), grouped by id,
  // in position order within a group. The two-digit sort's last pass is read in place,
  // so its grouping writes only the per-row arrays: without a copy of the items the
  // step took 0.96-0.97x the time (docs/DECISIONS.md).
  const uint32_t* items = nullptr;
  uint32_t item_mask = 0;
  Scratch<uint32_t> item_storage;  // where items points
  int64_t size() const { return num_unique; }
};

// The sorts' buffers that do not outlive a dedup: one set per thread serves every table
// it sorts. Per table instead, a batch's dedup (several tables, then their updates)
// touched ~30% more fresh memory.
struct SortScratch {
  Scratch<uint64_t> keys, tmp;     // sort_keys' keys
  Scratch<uint32_t> first_pass;    // sort_by_two_digits' first pass, when there are two
  Scratch<int64_t> counts;         // per-part histograms, then cursors
};

inline int bit_width_u64(uint64_t x) { return x == 0 ? 0 : 64 - __builtin_clzll(x); }

// Bits of the id sorted per radix pass: 2^11 buckets of counts stay in L1.
constexpr int kDedupDigitBits = 11;

// Below this many ids per part, splitting costs more (histograms, a fork) than it saves.
constexpr int64_t kDedupIdsPerPart = 32768;

// The first pass over the ids reads them from memory (the lookup read them long
// before), and the hardware prefetcher alone did not keep up: requesting each cache
// line of ids this many ids ahead took 0.87-0.89x the dedup's time for 128-2048 at 1
// thread, 0.93x at 2 (8 x 164k Zipf ids, Intel host, session 11; in-process A/B, the
// order rotated).
constexpr int64_t kPrefetchIdsAhead = 512;

// Requests the cache line of ids[j + kPrefetchIdsAhead] once per line of ids.
template <typename index_t>
inline void prefetch_ids_ahead(const index_t* ids, int64_t j, int64_t end) {
  constexpr int64_t kIdsPerLine = 64 / sizeof(index_t);
  if (j % kIdsPerLine == 0 && j + kPrefetchIdsAhead < end) {
    prefetch_row(ids + j + kPrefetchIdsAhead, 1);
  }
}

// Where part c of `parts` contiguous slices of [0, n) begins.
inline int64_t part_begin(int64_t c, int64_t parts, int64_t n) { return n * c / parts; }

// Calls fn(part, begin, end) for `parts` contiguous slices of [0, n), in parallel
// when parts > 1.
template <typename F>
void for_each_part(int64_t parts, int64_t n, const F& fn) {
  if (parts == 1) return fn(0, 0, n);
  at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      fn(c, part_begin(c, parts, n), part_begin(c + 1, parts, n));
    }
  });
}

// Per-part histograms (count[c * buckets + d]) into cursors: bucket-major, then part
// order, which keeps the sort stable. start (buckets + 1 entries, when given) receives
// each bucket's first position.
inline void counts_to_cursors(int64_t* count, int64_t parts, int64_t buckets,
                              int64_t* start = nullptr) {
  int64_t sum = 0;
  for (int64_t d = 0; d < buckets; ++d) {
    if (start != nullptr) start[d] = sum;
    for (int64_t c = 0; c < parts; ++c) {
      const int64_t n = count[c * buckets + d];
      count[c * buckets + d] = sum;
      sum += n;
    }
  }
  if (start != nullptr) start[buckets] = sum;
}

// The bag of position j (empty bags end where they start: skipped).
template <typename index_t>
int64_t bag_of_position(const index_t* offsets, int64_t num_bags, int64_t j) {
  return std::upper_bound(offsets, offsets + num_bags + 1, static_cast<index_t>(j)) - offsets -
         1;
}

// Reads the sorted (id, item) pairs of sort_keys.
struct PackedKeys {
  static constexpr bool kItemsInPlace = false;  // the grouping writes them out
  const uint64_t* keys;
  int item_bits;
  int64_t id(int64_t k) const { return static_cast<int64_t>(keys[k] >> item_bits); }
  int64_t item(int64_t k) const {
    return static_cast<int64_t>(keys[k] & ((uint64_t{1} << item_bits) - 1));
  }
  // Calls fn(k, id of k) for k in [begin, end), in order.
  template <typename F>
  void for_each_id(int64_t begin, int64_t end, const F& fn) const {
    for (int64_t k = begin; k < end; ++k) fn(k, id(k));
  }
};

// Reads the sorted pairs of sort_by_two_digits: the digit the last pass sorted by is
// the bucket position k falls in (start: the buckets' first positions), the rest of
// the id is beside the item.
struct ImpliedDigitKeys {
  static constexpr bool kItemsInPlace = true;  // the low item_bits of each value
  const uint32_t* values;
  const int64_t* start;  // [buckets + 1]
  int64_t buckets;
  int implied_shift, item_bits;

  int64_t bucket_of(int64_t k) const {
    return std::upper_bound(start, start + buckets + 1, k) - start - 1;
  }
  int64_t id(int64_t k) const {
    return (bucket_of(k) << implied_shift) | static_cast<int64_t>(values[k] >> item_bits);
  }
  // Calls fn(k, bucket of k) for k in [begin, end), in order: a loop per bucket, not a
  // bucket check per position (the grouping pass took 0.81x the time in a scratch copy).
  template <typename F>
  void for_each_bucket(int64_t begin, int64_t end, const F& fn) const {
    for (int64_t b = begin < end ? bucket_of(begin) : 0, k = begin; k < end; ++b) {
      for (const int64_t stop = std::min(start[b + 1], end); k < stop; ++k) fn(k, b);
    }
  }
  // Calls fn(k, id of k) for k in [begin, end), in order.
  template <typename F>
  void for_each_id(int64_t begin, int64_t end, const F& fn) const {
    const int shift = implied_shift, low_shift = item_bits;
    const uint32_t* v = values;
    for_each_bucket(begin, end, [&](int64_t k, int64_t b) {
      fn(k, (b << shift) | static_cast<int64_t>(v[k] >> low_shift));
    });
  }
};

// From sorted pairs to unique_ids and seg; also to items, unless the pairs' values
// are read as the items in place (Keys::kItemsInPlace: r.items set by the caller).
// Each part writes the runs that start in it from its own first position on (n
// positions start at most n runs), then the parts' runs are moved down to follow each
// other: one pass, all parts in parallel.
template <typename Keys>
void group_sorted(RowSegments& r, int64_t parts, const Keys& keys) {
  const int64_t nnz = r.nnz;
  uint32_t* items_out = nullptr;
  if constexpr (!Keys::kItemsInPlace) {
    items_out = r.item_storage.resize(nnz);
    r.items = items_out;
    r.item_mask = ~uint32_t{0};
  }
  std::vector<int64_t> runs(parts, 0);
  int64_t* unique_ids = r.unique_ids.resize(nnz);
  int64_t* seg = r.seg.data();
  for_each_part(parts, nnz, [&](int64_t c, int64_t begin, int64_t end) {
    const Keys k = keys;
    int64_t u = begin;
    int64_t prev = begin == 0 ? -1 : k.id(begin - 1);
    // Branch-free (runs are short, their starts unpredictable): every position writes
    // the next free slot and only a run's start keeps it. The next free slot is never
    // past the position being read, so a part writes only slots in [begin, end).
    k.for_each_id(begin, end, [&](int64_t j, int64_t id) {
      if constexpr (!Keys::kItemsInPlace) items_out[j] = static_cast<uint32_t>(k.item(j));
      unique_ids[u] = id;
      seg[u] = j;
      u += id != prev;
      prev = id;
    });
    runs[c] = u - begin;
  });
  int64_t num_unique = runs[0];
  for (int64_t c = 1; c < parts; ++c) {
    const int64_t begin = part_begin(c, parts, nnz);
    std::memmove(unique_ids + num_unique, unique_ids + begin, runs[c] * sizeof(int64_t));
    std::memmove(seg + num_unique, seg + begin, runs[c] * sizeof(int64_t));
    num_unique += runs[c];
  }
  r.num_unique = num_unique;
  seg[num_unique] = nnz;
}

// The constants of sort_by_two_digits. Each of its loops reads them from its own copy:
// through the lambdas' captures GCC reloaded them from memory on every iteration (a
// store to a counter or a value might have changed them; perf annotate, session 14).
struct TwoDigitShape {
  int lo_bits, item_bits;
  uint64_t lo_mask, hi_mask;
  uint32_t item_mask;
  int64_t rows;
  bool by_bag;
};

// Sorts by the id's low digit (lo_bits) then its high one (hi_bits, may be 0), moving
// 32-bit (other digit << item_bits | item) values. ids are range-checked in the
// histogram pass, before anything is scattered.
template <typename index_t>
void sort_by_two_digits(RowSegments& r, SortScratch& scratch, const char* op, const index_t* ids,
                        const index_t* offsets, int64_t num_bags, int64_t rows, int64_t parts,
                        int lo_bits, int hi_bits, int item_bits) {
  const int64_t nnz = r.nnz;
  const int64_t lo_buckets = int64_t{1} << lo_bits, hi_buckets = int64_t{1} << hi_bits;
  const TwoDigitShape shape{lo_bits,
                            item_bits,
                            static_cast<uint64_t>(lo_buckets - 1),
                            static_cast<uint64_t>(hi_buckets - 1),
                            (uint32_t{1} << item_bits) - 1,
                            rows,
                            r.item_is == Occurrence::kBag};
  int64_t* counts =
      scratch.counts.resize(parts * (lo_buckets + hi_buckets) + lo_buckets + hi_buckets + 2);
  int64_t* lo_count = counts;
  int64_t* hi_count = lo_count + parts * lo_buckets;
  int64_t* lo_start = hi_count + parts * hi_buckets;
  int64_t* hi_start = lo_start + lo_buckets + 1;
  // With one part the high digits' histogram is counted here too; with several it is
  // counted over the first pass's output below (its parts are other positions).
  std::vector<char> part_bad(parts, 0);
  for_each_part(parts, nnz, [&](int64_t c, int64_t begin, int64_t end) {
    const TwoDigitShape s = shape;
    int64_t* lo = lo_count + c * lo_buckets;
    int64_t* hi = hi_count + c * hi_buckets;
    std::fill(lo, lo + lo_buckets, 0);
    std::fill(hi, hi + hi_buckets, 0);
    bool bad = false;
    const auto histogram = [&](auto count_hi) {
      for (int64_t j = begin; j < end; ++j) {
        prefetch_ids_ahead(ids, j, end);
        bad |= id_out_of_range(ids[j], s.rows);
        const auto id = static_cast<uint64_t>(static_cast<int64_t>(ids[j]));
        ++lo[id & s.lo_mask];  // masked: a bad id counts somewhere harmless until raised
        if constexpr (count_hi) ++hi[(id >> s.lo_bits) & s.hi_mask];
      }
    };
    parts == 1 ? histogram(std::true_type{}) : histogram(std::false_type{});
    part_bad[c] = bad;
  });
  if (std::find(part_bad.begin(), part_bad.end(), 1) != part_bad.end()) {
    check_ids_in_range(op, ids, nnz, rows);  // raises, naming the first bad id
  }
  counts_to_cursors(lo_count, parts, lo_buckets, lo_start);
  uint32_t* first = (hi_bits == 0 ? r.item_storage : scratch.first_pass).resize(nnz);
  for_each_part(parts, nnz, [&](int64_t c, int64_t begin, int64_t end) {
    const TwoDigitShape s = shape;
    int64_t* cursor = lo_count + c * lo_buckets;
    int64_t b = bag_of_position(offsets, num_bags, begin);
    for (int64_t j = begin; j < end; ++j) {
      while (offsets[b + 1] <= j) ++b;
      const auto id = static_cast<uint64_t>(ids[j]);
      const uint64_t item = s.by_bag ? b : j;
      first[cursor[id & s.lo_mask]++] =
          static_cast<uint32_t>((id >> s.lo_bits) << s.item_bits | item);
    }
  });
  r.item_mask = shape.item_mask;
  if (hi_bits == 0) {
    r.items = first;
    return group_sorted(r, parts, ImpliedDigitKeys{first, lo_start, lo_buckets, 0, item_bits});
  }
  if (parts > 1) {
    for_each_part(parts, nnz, [&](int64_t c, int64_t begin, int64_t end) {
      const int shift = shape.item_bits;
      int64_t* hi = hi_count + c * hi_buckets;
      std::fill(hi, hi + hi_buckets, 0);
      for (int64_t k = begin; k < end; ++k) ++hi[first[k] >> shift];
    });
  }
  counts_to_cursors(hi_count, parts, hi_buckets, hi_start);
  uint32_t* second = r.item_storage.resize(nnz);
  for_each_part(parts, nnz, [&](int64_t c, int64_t begin, int64_t end) {
    const TwoDigitShape s = shape;
    int64_t* cursor = hi_count + c * hi_buckets;
    const ImpliedDigitKeys low{first, lo_start, lo_buckets, 0, s.item_bits};
    low.for_each_bucket(begin, end, [&](int64_t k, int64_t lo) {
      const uint32_t v = first[k];
      second[cursor[v >> s.item_bits]++] =
          static_cast<uint32_t>(lo) << s.item_bits | (v & s.item_mask);
    });
  });
  r.items = second;
  group_sorted(r, parts, ImpliedDigitKeys{second, hi_start, hi_buckets, lo_bits, item_bits});
}

// One 64-bit key per position, as many 11-bit passes as the largest id needs. The
// keys' pass also range-checks the ids and finds the largest (a pass of its own costs
// ~1.4 ns per id); a bad id is named before any key is used.
template <typename index_t>
void sort_keys(RowSegments& r, SortScratch& scratch, const char* op, const index_t* ids, const index_t* offsets,
               int64_t num_bags, int64_t rows, int64_t parts, int item_bits) {
  const int64_t nnz = r.nnz;
  const bool by_bag = r.item_is == Occurrence::kBag;
  uint64_t* keys = scratch.keys.resize(nnz);
  uint64_t* tmp = scratch.tmp.resize(nnz);
  std::vector<int64_t> part_max(parts, 0);
  std::vector<char> part_bad(parts, 0);
  for_each_part(parts, nnz, [&, keys](int64_t c, int64_t begin, int64_t end) {
    const int64_t n_rows = rows;  // a local copy, as in TwoDigitShape's note
    int64_t max_id = 0;
    bool bad = false;
    int64_t b = bag_of_position(offsets, num_bags, begin);
    for (int64_t j = begin; j < end; ++j) {
      prefetch_ids_ahead(ids, j, end);
      while (offsets[b + 1] <= j) ++b;
      const index_t id = ids[j];
      bad |= id_out_of_range(id, n_rows);
      max_id = std::max<int64_t>(max_id, id);
      keys[j] = (static_cast<uint64_t>(id) << item_bits) | static_cast<uint64_t>(by_bag ? b : j);
    }
    part_max[c] = max_id;
    part_bad[c] = bad;
  });
  if (std::find(part_bad.begin(), part_bad.end(), 1) != part_bad.end()) {
    check_ids_in_range(op, ids, nnz, rows);  // raises, naming the first bad id
  }
  const int64_t max_id = *std::max_element(part_max.begin(), part_max.end());
  const int id_bits = bit_width_u64(static_cast<uint64_t>(max_id));
  TORCH_CHECK(item_bits + id_bits <= 64, op, ": ", nnz, " ids with ids up to ", max_id,
              " do not fit the 64-bit sort key");
  constexpr int64_t kBuckets = int64_t{1} << kDedupDigitBits;
  int64_t* counts = scratch.counts.resize(parts * kBuckets);
  for (int shift = item_bits; shift < item_bits + id_bits; shift += kDedupDigitBits) {
    for_each_part(parts, nnz, [=](int64_t c, int64_t begin, int64_t end) {
      int64_t* count = counts + c * kBuckets;
      std::fill(count, count + kBuckets, 0);
      for (int64_t j = begin; j < end; ++j) ++count[(keys[j] >> shift) & (kBuckets - 1)];
    });
    counts_to_cursors(counts, parts, kBuckets);
    for_each_part(parts, nnz, [=](int64_t c, int64_t begin, int64_t end) {
      int64_t* cursor = counts + c * kBuckets;
      for (int64_t j = begin; j < end; ++j) {
        tmp[cursor[(keys[j] >> shift) & (kBuckets - 1)]++] = keys[j];
      }
    });
    std::swap(keys, tmp);
  }
  group_sorted(r, parts, PackedKeys{keys, item_bits});
}

// Checks offsets and ids, then groups the occurrences by id into r (sorting in the
// calling thread's `scratch`), recording `item_is` of each; `op` names the caller in
// errors. Only r and scratch are written before every check passed. Inside a parallel region it runs on the calling thread
// alone (one table per thread: see dedup_tables in cpu/sparse_update.cpp).
template <typename index_t>
const RowSegments& dedup_rows(RowSegments& r, SortScratch& scratch, const char* op,
                              const index_t* ids, int64_t nnz, const index_t* offsets,
                              int64_t num_bags, int64_t rows, Occurrence item_is) {
  check_offsets(op, nnz, offsets, num_bags);
  r.nnz = nnz;
  r.num_unique = 0;
  r.item_is = item_is;
  r.seg.resize(nnz + 1)[0] = 0;
  if (nnz == 0) return r;
  if (rows <= 0) check_ids_in_range(op, ids, nnz, rows);  // raises: no id fits
  const int64_t parts =
      at::in_parallel_region()
          ? 1
          : std::clamp<int64_t>(nnz / kDedupIdsPerPart, 1, at::get_num_threads());
  // Items, and the bags a weighted gradient gathers for them, are 32-bit.
  constexpr int64_t kMaxItems = int64_t{1} << 32;
  TORCH_CHECK(num_bags <= kMaxItems, op, ": at most 2^32 bags per update, got ", num_bags,
              "; split the batch");
  TORCH_CHECK(item_is == Occurrence::kBag || nnz <= kMaxItems, op,
              ": at most 2^32 ids with per-sample weights per update, got ", nnz,
              "; split the batch");
  const int64_t items = item_is == Occurrence::kBag ? num_bags : nnz;
  const int item_bits = std::max(1, bit_width_u64(static_cast<uint64_t>(items - 1)));
  const int id_bits = std::max(1, bit_width_u64(static_cast<uint64_t>(rows - 1)));
  const int lo_bits = id_bits <= kDedupDigitBits ? id_bits : (id_bits + 1) / 2;
  const int hi_bits = id_bits - lo_bits;  // <= lo_bits
  if (lo_bits <= kDedupDigitBits && lo_bits + item_bits <= 32) {
    sort_by_two_digits(r, scratch, op, ids, offsets, num_bags, rows, parts, lo_bits, hi_bits, item_bits);
  } else {
    sort_keys(r, scratch, op, ids, offsets, num_bags, rows, parts, item_bits);
  }
  return r;
}

}  // namespace recis
