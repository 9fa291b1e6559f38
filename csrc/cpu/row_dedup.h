#pragma once
// Deduplication of a SparseGrad's ids on CPU: groups the occurrences of each unique
// id so that one thread can reduce a row's gradient and update it alone.
//
// Every position j packs into one 64-bit key (id << item_bits | item), where the item
// is j's bag or j itself (Occurrence); an LSD radix sort over the id bits only
// (stable, digits of at most 11 bits, as many passes as the largest id needs) orders
// the keys by (id, j); an id twice in one bag gives two equal keys by bag, which
// contribute the same gradient either way. Memory is O(nnz), never O(table rows), and
// is one workspace per calling thread reused across calls (cpu/scratch.h).
//
// Large batches are split into one part per thread: each pass histograms and
// scatters its parts in parallel, and the parts' cursors are laid out in part order,
// so the result is the same as the serial sort's for any number of threads.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/common.h"
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
  Scratch<int64_t> seg;         // [num_unique + 1] starts into `item`
  Scratch<int64_t> item;        // [nnz] each occurrence's bag or position, grouped by id,
                                // in position order within a group
  Scratch<uint64_t> keys, tmp;  // sort buffers
  Scratch<int64_t> counts;      // per-part histograms, then cursors; then each part's first unique
  int64_t size() const { return num_unique; }
};

inline int bit_width_u64(uint64_t x) { return x == 0 ? 0 : 64 - __builtin_clzll(x); }

// Bits of the id sorted per radix pass: 2^11 buckets of counts stay in L1.
constexpr int kDedupDigitBits = 11;

// Below this many ids per part, splitting costs more (histograms, a fork) than it saves.
constexpr int64_t kDedupIdsPerPart = 32768;

// Calls fn(part, begin, end) for `parts` contiguous slices of [0, n), in parallel
// when parts > 1.
template <typename F>
void for_each_part(int64_t parts, int64_t n, const F& fn) {
  if (parts == 1) return fn(0, 0, n);
  at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) fn(c, n * c / parts, n * (c + 1) / parts);
  });
}

// Checks offsets and ids, then groups the occurrences by id, recording `item_is` of
// each; `op` names the caller in errors. Only this workspace is written before every
// check passed. Returns this thread's workspace, valid until its next call.
template <typename index_t>
const RowSegments& dedup_rows(const char* op, const index_t* ids, int64_t nnz,
                              const index_t* offsets, int64_t num_bags, int64_t rows,
                              Occurrence item_is) {
  check_offsets(op, nnz, offsets, num_bags);
  static thread_local RowSegments r;
  r.nnz = nnz;
  r.num_unique = 0;
  r.item_is = item_is;
  r.seg.resize(nnz + 1)[0] = 0;
  if (nnz == 0) return r;
  const int64_t parts =
      at::in_parallel_region()
          ? 1
          : std::clamp<int64_t>(nnz / kDedupIdsPerPart, 1, at::get_num_threads());
  const bool by_bag = item_is == Occurrence::kBag;
  const int item_bits =
      std::max(1, bit_width_u64(static_cast<uint64_t>((by_bag ? num_bags : nnz) - 1)));
  uint64_t* keys = r.keys.resize(nnz);
  uint64_t* tmp = r.tmp.resize(nnz);
  // The keys' pass also range-checks the ids and finds the largest (a pass of its own
  // costs ~1.4 ns per id); a bad id is named before any key is used.
  std::vector<int64_t> part_max(parts, 0);
  std::vector<char> part_bad(parts, 0);
  for_each_part(parts, nnz, [&, keys](int64_t c, int64_t begin, int64_t end) {
    int64_t max_id = 0;
    bool bad = false;
    // The bag of position `begin` (empty bags end where they start: skip them).
    int64_t b = std::upper_bound(offsets, offsets + num_bags + 1, static_cast<index_t>(begin)) -
                offsets - 1;
    for (int64_t j = begin; j < end; ++j) {
      while (offsets[b + 1] <= j) ++b;
      const index_t id = ids[j];
      bad |= id_out_of_range(id, rows);
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
  int64_t* counts = r.counts.resize(parts * kBuckets + parts + 1);
  for (int shift = item_bits; shift < item_bits + id_bits; shift += kDedupDigitBits) {
    for_each_part(parts, nnz, [=](int64_t c, int64_t begin, int64_t end) {
      int64_t* count = counts + c * kBuckets;
      std::fill(count, count + kBuckets, 0);
      for (int64_t j = begin; j < end; ++j) ++count[(keys[j] >> shift) & (kBuckets - 1)];
    });
    // Cursors: bucket-major, then part order, which keeps the sort stable.
    int64_t sum = 0;
    for (int64_t b = 0; b < kBuckets; ++b) {
      for (int64_t c = 0; c < parts; ++c) {
        const int64_t n = counts[c * kBuckets + b];
        counts[c * kBuckets + b] = sum;
        sum += n;
      }
    }
    for_each_part(parts, nnz, [=](int64_t c, int64_t begin, int64_t end) {
      int64_t* cursor = counts + c * kBuckets;
      for (int64_t j = begin; j < end; ++j) {
        tmp[cursor[(keys[j] >> shift) & (kBuckets - 1)]++] = keys[j];
      }
    });
    std::swap(keys, tmp);
  }
  // Unique ids: the first key of each run. Every part but the last counts the runs
  // that start in it, so that each part knows where its first unique id goes.
  const uint64_t item_mask = (uint64_t{1} << item_bits) - 1;
  int64_t* first_unique = counts + parts * kBuckets;
  first_unique[0] = 0;
  for_each_part(parts, nnz, [=](int64_t c, int64_t begin, int64_t end) {
    if (c == parts - 1) return;
    int64_t n = 0;
    for (int64_t k = begin; k < end; ++k) {
      n += k == 0 || (keys[k] >> item_bits) != (keys[k - 1] >> item_bits);
    }
    first_unique[c + 1] = n;
  });
  for (int64_t c = 1; c < parts; ++c) first_unique[c] += first_unique[c - 1];
  int64_t* item = r.item.resize(nnz);
  int64_t* unique_ids = r.unique_ids.resize(nnz);
  int64_t* seg = r.seg.data();
  for_each_part(parts, nnz, [=](int64_t c, int64_t begin, int64_t end) {
    int64_t u = first_unique[c];
    int64_t prev = begin == 0 ? -1 : static_cast<int64_t>(keys[begin - 1] >> item_bits);
    for (int64_t k = begin; k < end; ++k) {
      const auto id = static_cast<int64_t>(keys[k] >> item_bits);
      item[k] = static_cast<int64_t>(keys[k] & item_mask);
      if (id != prev) {
        unique_ids[u] = id;
        seg[u++] = k;
        prev = id;
      }
    }
    if (c == parts - 1) first_unique[parts] = u;
  });
  r.num_unique = first_unique[parts];
  seg[r.num_unique] = nnz;
  return r;
}

}  // namespace recis
