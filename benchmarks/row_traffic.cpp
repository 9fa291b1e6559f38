// How fast this machine moves the memory one optimizer step of the kernels benchmark
// touches, each part alone, with no recis code: the limits against which
// benchmarks/kernels.py's step is read (benchmarks/RESULTS.md, Kernels).
//
//   g++ -O3 -mavx2 -mfma -o /tmp/row_traffic benchmarks/row_traffic.cpp
//   /tmp/row_traffic [dim] [repeats]        # dim 64 (default): a multiple of 8 up to 256
//
// The shape is kernels.py's default: 8 tables x 1M rows on huge pages, 8192 bags of
// 15-25 ids each, Zipf(1.05) ids scattered over the table by a fixed permutation. Each
// part is timed after a pass over 1 GiB that evicts the caches, median of `repeats`:
//   copy         1 GiB copied with plain (not streaming) vector stores, like a tensor
//                copy; read + write counted, the reference of the fractions below;
//   rows sorted  every unique row of the step read, changed and written back, in id
//                order, prefetched 8 rows ahead into L1 and 64 into L2 (as the update);
//   rows random  the same rows in a random order;
//   reduce       each unique row's gradient summed from its occurrences' rows of the
//                packed [bags, dim] gradient (prefetched 16 ahead), no table rows;
//   update       reduce + rows sorted in one loop, as recis's update does;
//   forward      the pooled lookup: each bag's rows summed in bag order, 64 ids ahead.
// "GB/s" counts each unique row read and written once (rows, update; as kernels.py
// counts the update's bytes, less grad_out) or each occurrence's gradient row read once
// (reduce, mostly from cache, so given no fraction of the copy).
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <immintrin.h>
#include <numeric>
#include <random>
#include <vector>

namespace {

constexpr int kTables = 8;
constexpr int64_t kRows = 1000000, kBags = 8192, kMaxDim = 256;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

float* huge_floats(int64_t n) {
  const size_t bytes = (static_cast<size_t>(n) * 4 + (2u << 20) - 1) & ~size_t((2u << 20) - 1);
  void* p = std::aligned_alloc(2u << 20, bytes);
  if (p == nullptr) {
    std::fprintf(stderr, "row_traffic: cannot allocate %zu bytes\n", bytes);
    std::exit(1);
  }
  madvise(p, bytes, MADV_HUGEPAGE);
  std::memset(p, 0, bytes);
  return static_cast<float*>(p);
}

void prefetch_l1(const float* row, int64_t dim) {
  for (int64_t off = 0; off < dim * 4; off += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(row) + off, _MM_HINT_T0);
  }
}

void prefetch_l2(const float* row, int64_t dim) {
  for (int64_t off = 0; off < dim * 4; off += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(row) + off, _MM_HINT_T2);
  }
}

struct Table {
  float* weight;
  float* grad;                   // [kBags, dim], packed
  std::vector<int64_t> ids;      // bag order
  std::vector<int64_t> offsets;  // [kBags + 1]
  std::vector<int64_t> unique;   // ascending
  std::vector<int64_t> seg;      // [unique + 1] into bag
  std::vector<int64_t> bag;      // occurrences grouped by id, bags ascending in a group
  std::vector<int64_t> shuffled; // `unique` in a random order
};

Table make_table(int64_t dim, std::mt19937_64& gen) {
  Table t;
  t.weight = huge_floats(kRows * dim);
  t.grad = huge_floats(kBags * dim);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (int64_t i = 0; i < kBags * dim; ++i) t.grad[i] = static_cast<float>(uniform(gen) * 1e-3);
  std::vector<int64_t> perm(kRows);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), gen);
  const double a = 1.0 - 1.05;  // inverse CDF of the power law on [1, rows + 1)
  std::vector<std::pair<int64_t, int64_t>> occurrences;
  t.offsets.push_back(0);
  for (int64_t b = 0; b < kBags; ++b) {
    const int64_t n = 15 + static_cast<int64_t>(gen() % 11);
    for (int64_t i = 0; i < n; ++i) {
      const double rank = std::pow(1.0 + uniform(gen) * (std::pow(kRows + 1.0, a) - 1.0), 1.0 / a);
      const int64_t id = perm[std::clamp<int64_t>(static_cast<int64_t>(rank) - 1, 0, kRows - 1)];
      t.ids.push_back(id);
      occurrences.emplace_back(id, b);
    }
    t.offsets.push_back(static_cast<int64_t>(t.ids.size()));
  }
  std::sort(occurrences.begin(), occurrences.end());
  for (size_t k = 0; k < occurrences.size(); ++k) {
    if (k == 0 || occurrences[k].first != occurrences[k - 1].first) {
      t.unique.push_back(occurrences[k].first);
      t.seg.push_back(static_cast<int64_t>(k));
    }
    t.bag.push_back(occurrences[k].second);
  }
  t.seg.push_back(static_cast<int64_t>(occurrences.size()));
  t.shuffled = t.unique;
  std::shuffle(t.shuffled.begin(), t.shuffled.end(), gen);
  return t;
}

// Reads, changes and writes back the rows `order` names, prefetched as the update does.
void touch_rows(const Table& t, const std::vector<int64_t>& order, int64_t dim) {
  const int64_t n = static_cast<int64_t>(order.size());
  for (int64_t u = 0; u < n; ++u) {
    if (u + 64 < n) prefetch_l2(t.weight + order[u + 64] * dim, dim);
    if (u + 8 < n) prefetch_l1(t.weight + order[u + 8] * dim, dim);
    float* w = t.weight + order[u] * dim;
    for (int64_t d = 0; d < dim; ++d) w[d] -= 1e-3f * w[d];
  }
}

// Sums unique row u's gradient into acc.
void reduce_row(const Table& t, int64_t u, int64_t dim, float* acc) {
  const int64_t nnz = static_cast<int64_t>(t.bag.size());
  std::fill(acc, acc + dim, 0.0f);
  for (int64_t k = t.seg[u]; k < t.seg[u + 1]; ++k) {
    if (k + 16 < nnz) prefetch_l1(t.grad + t.bag[k + 16] * dim, dim);
    const float* g = t.grad + t.bag[k] * dim;
    for (int64_t d = 0; d < dim; ++d) acc[d] += g[d];
  }
}

float sink = 0.0f;  // keeps the reduce-only loop's sums alive

void reduce_only(const Table& t, int64_t dim) {
  alignas(64) float acc[kMaxDim];
  for (int64_t u = 0; u < static_cast<int64_t>(t.unique.size()); ++u) {
    reduce_row(t, u, dim, acc);
    sink += acc[0];
  }
}

void update(const Table& t, int64_t dim) {
  alignas(64) float acc[kMaxDim];
  const int64_t n = static_cast<int64_t>(t.unique.size());
  for (int64_t u = 0; u < n; ++u) {
    if (u + 64 < n) prefetch_l2(t.weight + t.unique[u + 64] * dim, dim);
    if (u + 8 < n) prefetch_l1(t.weight + t.unique[u + 8] * dim, dim);
    reduce_row(t, u, dim, acc);
    float* w = t.weight + t.unique[u] * dim;
    for (int64_t d = 0; d < dim; ++d) w[d] -= 0.01f * acc[d];
  }
}

void forward(const Table& t, int64_t dim, float* out) {
  const int64_t nnz = static_cast<int64_t>(t.ids.size());
  alignas(64) float acc[kMaxDim];
  for (int64_t b = 0; b < kBags; ++b) {
    std::fill(acc, acc + dim, 0.0f);
    for (int64_t j = t.offsets[b]; j < t.offsets[b + 1]; ++j) {
      if (j + 64 < nnz) prefetch_l1(t.weight + t.ids[j + 64] * dim, dim);
      const float* w = t.weight + t.ids[j] * dim;
      for (int64_t d = 0; d < dim; ++d) acc[d] += w[d];
    }
    std::memcpy(out + b * dim, acc, dim * 4);
  }
}

// Plain (cached) stores, as a tensor copy makes: a large memcpy would stream instead.
void copy_floats(const float* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(dst + i, _mm256_loadu_ps(src + i));
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t dim = argc > 1 ? std::atoll(argv[1]) : 64;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 7;
  if (dim < 1 || dim > kMaxDim || dim % 8 != 0 || repeats < 1) {
    std::fprintf(stderr, "usage: row_traffic [dim: a multiple of 8 up to %lld] [repeats >= 1]\n",
                 static_cast<long long>(kMaxDim));
    return 2;
  }
  std::mt19937_64 gen(0);
  std::vector<Table> tables;
  int64_t unique = 0, nnz = 0;
  for (int i = 0; i < kTables; ++i) {
    tables.push_back(make_table(dim, gen));
    unique += static_cast<int64_t>(tables.back().unique.size());
    nnz += static_cast<int64_t>(tables.back().ids.size());
  }
  const int64_t copy_floats_n = int64_t{1} << 28;  // 1 GiB
  float* src = huge_floats(copy_floats_n);
  float* dst = huge_floats(copy_floats_n);
  float* out = huge_floats(kBags * dim);
  const auto evict = [&] {
    for (int64_t i = 0; i < copy_floats_n; i += 16) src[i] += 1.0f;
  };
  const auto median_seconds = [&](const auto& body) {
    std::vector<double> times;
    for (int r = 0; r < repeats; ++r) {
      evict();
      const double t0 = now();
      body();
      times.push_back(now() - t0);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  };
  const double row_bytes = dim * 4.0;
  const double copy_s = median_seconds([&] { copy_floats(src, dst, copy_floats_n); });
  const double copy_bw = 2.0 * copy_floats_n * 4 / copy_s;
  std::printf("dim %lld, %lld unique rows and %lld ids per step over %d tables\n",
              static_cast<long long>(dim), static_cast<long long>(unique),
              static_cast<long long>(nnz), kTables);
  std::printf("%-12s %8.2f GB/s (read + write)\n", "copy", copy_bw / 1e9);
  // The fraction of the copy's bandwidth only for traffic to memory: the reduce reads a
  // 2 MiB gradient per table, mostly from cache.
  const auto report = [&](const char* name, double seconds, double bytes, bool to_memory) {
    std::printf("%-12s %8.2f ms", name, seconds * 1e3);
    if (bytes > 0) std::printf("  %6.2f GB/s", bytes / seconds / 1e9);
    if (to_memory) std::printf("  %3.0f%% of copy", 100.0 * bytes / seconds / copy_bw);
    std::printf("\n");
  };
  const double rows_bytes = 2.0 * unique * row_bytes;
  report("rows sorted", median_seconds([&] {
           for (const Table& t : tables) touch_rows(t, t.unique, dim);
         }),
         rows_bytes, true);
  report("rows random", median_seconds([&] {
           for (const Table& t : tables) touch_rows(t, t.shuffled, dim);
         }),
         rows_bytes, true);
  report("reduce", median_seconds([&] {
           for (const Table& t : tables) reduce_only(t, dim);
         }),
         nnz * row_bytes, false);
  report("update", median_seconds([&] {
           for (const Table& t : tables) update(t, dim);
         }),
         rows_bytes, true);
  report("forward", median_seconds([&] {
           for (const Table& t : tables) forward(t, dim, out);
         }),
         0, false);
  return sink == 12345.0f ? 1 : 0;
}
