#pragma once
// Deduplication of a SparseGrad's ids on CPU: groups the positions of each unique
// id so that one thread can reduce a row's gradient and update it alone.
//
// Every position j packs into one 64-bit key (id << pos_bits | j); an LSD radix
// sort over the id bits only (stable, 11-bit digits, as many passes as the largest
// id needs) orders the keys by (id, j). Memory is O(nnz), never O(table rows), and is
// one workspace per thread reused across calls (cpu/scratch.h).
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

#include "cpu/common.h"
#include "cpu/scratch.h"

namespace recis {

struct RowSegments {
  int64_t num_unique = 0, nnz = 0;
  Scratch<int64_t> unique_ids;  // [num_unique], ascending
  Scratch<int64_t> seg;         // [num_unique + 1] starts into `pos`
  Scratch<int64_t> pos;         // [nnz] positions in ids, grouped by id, ascending within a group
  Scratch<int64_t> bag_of;      // [nnz] position -> its bag
  Scratch<uint64_t> keys, tmp;  // sort buffers
  int64_t size() const { return num_unique; }
};

inline int bit_width_u64(uint64_t x) { return x == 0 ? 0 : 64 - __builtin_clzll(x); }

// Checks offsets and ids (check_bags_and_ids), then groups the positions by id;
// `op` names the caller in errors. Nothing is written before every check passed.
// Returns this thread's workspace, valid until its next call.
template <typename index_t>
const RowSegments& dedup_rows(const char* op, const index_t* ids, int64_t nnz, const index_t* offsets,
                       int64_t num_bags, int64_t rows) {
  check_bags_and_ids(op, ids, nnz, offsets, num_bags, rows);
  int64_t max_id = 0;
  for (int64_t j = 0; j < nnz; ++j) max_id = std::max<int64_t>(max_id, ids[j]);
  static thread_local RowSegments r;
  r.nnz = nnz;
  r.num_unique = 0;
  int64_t* bag_of = r.bag_of.resize(nnz);
  for (int64_t b = 0; b < num_bags; ++b) {
    std::fill(bag_of + offsets[b], bag_of + offsets[b + 1], b);
  }
  r.seg.resize(nnz + 1)[0] = 0;
  if (nnz == 0) return r;
  const int pos_bits = std::max(1, bit_width_u64(static_cast<uint64_t>(nnz - 1)));
  const int id_bits = bit_width_u64(static_cast<uint64_t>(max_id));
  TORCH_CHECK(pos_bits + id_bits <= 64, op, ": ", nnz, " ids with ids up to ", max_id,
              " do not fit the 64-bit sort key");
  uint64_t* keys = r.keys.resize(nnz);
  uint64_t* tmp = r.tmp.resize(nnz);
  for (int64_t j = 0; j < nnz; ++j) {
    keys[j] = (static_cast<uint64_t>(ids[j]) << pos_bits) | static_cast<uint64_t>(j);
  }
  constexpr int kDigit = 11;
  constexpr int64_t kBuckets = int64_t{1} << kDigit;
  int64_t count[kBuckets];
  for (int shift = pos_bits; shift < pos_bits + id_bits; shift += kDigit) {
    std::fill(count, count + kBuckets, 0);
    for (int64_t j = 0; j < nnz; ++j) ++count[(keys[j] >> shift) & (kBuckets - 1)];
    int64_t sum = 0;
    for (auto& c : count) {
      const int64_t n = c;
      c = sum;
      sum += n;
    }
    for (int64_t j = 0; j < nnz; ++j) tmp[count[(keys[j] >> shift) & (kBuckets - 1)]++] = keys[j];
    std::swap(keys, tmp);
  }
  const uint64_t pos_mask = (pos_bits == 64) ? ~uint64_t{0} : ((uint64_t{1} << pos_bits) - 1);
  int64_t* pos = r.pos.resize(nnz);
  int64_t* unique_ids = r.unique_ids.resize(nnz);
  int64_t* seg = r.seg.data();
  int64_t prev = -1, u = 0;
  for (int64_t k = 0; k < nnz; ++k) {
    const auto id = static_cast<int64_t>(keys[k] >> pos_bits);
    pos[k] = static_cast<int64_t>(keys[k] & pos_mask);
    if (id != prev) {
      unique_ids[u] = id;
      seg[u++] = k;
      prev = id;
    }
  }
  seg[u] = nnz;
  r.num_unique = u;
  return r;
}

}  // namespace recis
