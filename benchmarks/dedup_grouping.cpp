// recis's CPU dedup (dedup_rows: a two-digit LSD radix sort, csrc/cpu/row_dedup.h)
// against a plain hash grouping of the same ids, alternating in one process: is a
// hash table a cheaper way to group a Zipf batch's occurrences by row?
//
//   TORCH=$(.venv/bin/python -c "import torch, os; print(os.path.dirname(torch.__file__))")
//   g++ -O3 -std=c++20 -fopenmp -Icsrc -I$TORCH/include -o /tmp/dedup_grouping \
//       benchmarks/dedup_grouping.cpp -L$TORCH/lib -lc10 -ltorch_cpu -Wl,-rpath,$TORCH/lib
//   OMP_NUM_THREADS=1 /tmp/dedup_grouping [rounds]
//
// The shape is kernels.py's default: 8 tables of 8192 bags of 15-25 ids each, Zipf(1.05)
// ids over 1M rows scattered by a fixed permutation. Both group each table's
// occurrences by id, recording each occurrence's bag; the hash grouping keeps the ids
// in first-seen order (the update does not need them sorted). Best of `rounds`, ns per
// id, and a check that both found the same unique ids with the same occurrence counts.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cpu/row_dedup.h"

namespace {

// Open addressing, linear probing: id -> unique index (first seen first), then the
// occurrences' bags scattered into one run per unique id, in position order.
struct HashGrouping {
  std::vector<uint64_t> slots;  // (id + 1) << 32 | unique index; 0 is empty (ids < 2^32 - 1)
  std::vector<uint32_t> unique_of, bags, count;
  std::vector<int64_t> unique_ids, seg;

  int64_t group(const int64_t* ids, int64_t nnz, const int64_t* offsets) {
    int64_t capacity = 1;
    while (capacity < nnz) capacity <<= 1;  // room for every id distinct
    slots.assign(capacity, 0);
    unique_of.resize(nnz);
    bags.resize(nnz);
    unique_ids.resize(nnz);
    count.assign(nnz, 0);
    const uint64_t mask = capacity - 1;
    const int shift = 64 - __builtin_ctzll(capacity);
    int64_t num_unique = 0;
    for (int64_t j = 0; j < nnz; ++j) {
      const uint64_t key = static_cast<uint64_t>(ids[j]) + 1;
      for (uint64_t h = ((key - 1) * 0x9E3779B97F4A7C15ull) >> shift;; h = (h + 1) & mask) {
        if ((slots[h] >> 32) == key) {
          unique_of[j] = static_cast<uint32_t>(slots[h]);
          break;
        }
        if (slots[h] == 0) {
          slots[h] = key << 32 | static_cast<uint64_t>(num_unique);
          unique_ids[num_unique] = ids[j];
          unique_of[j] = static_cast<uint32_t>(num_unique++);
          break;
        }
      }
      ++count[unique_of[j]];
    }
    seg.resize(num_unique + 1);
    int64_t start = 0;
    for (int64_t u = 0; u < num_unique; ++u) {
      seg[u] = start;
      start += count[u];
      count[u] = static_cast<uint32_t>(seg[u]);  // now the run's cursor
    }
    seg[num_unique] = start;
    for (int64_t j = 0, b = 0; j < nnz; ++j) {
      while (offsets[b + 1] <= j) ++b;
      bags[count[unique_of[j]]++] = static_cast<uint32_t>(b);
    }
    return num_unique;
  }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 40;
  constexpr int64_t kRows = 1000000, kBags = 8192, kTables = 8;
  std::mt19937_64 rng(1);
  std::vector<double> cdf(kRows);
  double total = 0;
  for (int64_t i = 0; i < kRows; ++i) cdf[i] = total += 1.0 / std::pow(i + 1, 1.05);
  std::vector<int64_t> permutation(kRows);
  for (int64_t i = 0; i < kRows; ++i) permutation[i] = i;
  std::shuffle(permutation.begin(), permutation.end(), rng);
  std::uniform_real_distribution<double> draw(0, total);
  std::uniform_int_distribution<int> bag_length(15, 25);
  std::vector<std::vector<int64_t>> ids(kTables), offsets(kTables);
  int64_t nnz = 0;
  for (int64_t t = 0; t < kTables; ++t) {
    offsets[t].push_back(0);
    for (int64_t b = 0; b < kBags; ++b) {
      for (int k = bag_length(rng); k > 0; --k) {
        const int64_t rank = std::lower_bound(cdf.begin(), cdf.end(), draw(rng)) - cdf.begin();
        ids[t].push_back(permutation[std::min(rank, kRows - 1)]);
      }
      offsets[t].push_back(static_cast<int64_t>(ids[t].size()));
    }
    nnz += static_cast<int64_t>(ids[t].size());
  }

  recis::RowSegments sorted;
  recis::SortScratch scratch;
  HashGrouping hashed;
  double best_sort = 1e30, best_hash = 1e30;
  for (int round = 0; round < rounds; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t t = 0; t < kTables; ++t) {
      recis::dedup_rows(sorted, scratch, "dedup_grouping", ids[t].data(),
                        static_cast<int64_t>(ids[t].size()), offsets[t].data(), kBags, kRows,
                        recis::Occurrence::kBag);
    }
    best_sort = std::min(best_sort, seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    for (int64_t t = 0; t < kTables; ++t) {
      hashed.group(ids[t].data(), static_cast<int64_t>(ids[t].size()), offsets[t].data());
    }
    best_hash = std::min(best_hash, seconds_since(t0));
  }

  // Both groupings of every table: the same ids, each with the same number of occurrences.
  for (int64_t t = 0; t < kTables; ++t) {
    const int64_t n = static_cast<int64_t>(ids[t].size());
    recis::dedup_rows(sorted, scratch, "dedup_grouping", ids[t].data(), n, offsets[t].data(),
                      kBags, kRows, recis::Occurrence::kBag);
    const int64_t num_unique = hashed.group(ids[t].data(), n, offsets[t].data());
    std::vector<std::pair<int64_t, int64_t>> a, b;
    for (int64_t u = 0; u < sorted.size(); ++u) {
      a.emplace_back(sorted.unique_ids[u], sorted.seg[u + 1] - sorted.seg[u]);
    }
    for (int64_t u = 0; u < num_unique; ++u) {
      b.emplace_back(hashed.unique_ids[u], hashed.seg[u + 1] - hashed.seg[u]);
    }
    std::sort(b.begin(), b.end());
    if (a != b) {
      std::fprintf(stderr, "table %ld: the two groupings differ\n", static_cast<long>(t));
      return 1;
    }
  }
  std::printf("%ld ids in %ld tables, best of %d rounds\n", static_cast<long>(nnz),
              static_cast<long>(kTables), rounds);
  std::printf("recis dedup_rows (radix sort): %.2f ns per id\n", best_sort * 1e9 / nnz);
  std::printf("hash grouping:                 %.2f ns per id (%.2fx)\n", best_hash * 1e9 / nnz,
              best_hash / best_sort);
}
