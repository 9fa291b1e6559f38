// Can the dedup hide inside the row update on the same core? A model of the two loops,
// not recis's kernels: a row-wise Adagrad update of 55,000 sorted random rows of a
// 1M x 64 float table (prefetched 8 rows ahead, gradients from a small L1-resident
// buffer), and a two-digit LSD radix sort of 164,000 Zipf-like (id, position) pairs as
// the dedup does (csrc/cpu/row_dedup.h), each alone and then interleaved: after every
// updated row the sort advances by `per_row` items (a resumable pass), then finishes.
// If the update left the core idle while it waits on memory, the interleaved time
// would approach the longer of the two; it stays near their sum. Best of 15 each, one
// process, one thread:
//
//   g++ -O3 -march=native -std=c++20 -o /tmp/dedup_interleave benchmarks/dedup_interleave.cpp
//   /tmp/dedup_interleave [per_row]
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include <algorithm>

constexpr int64_t kRows = 1 << 20, kDim = 64;
constexpr int kBits = 10, kBuckets = 1 << kBits;

struct Radix {  // LSD radix sort of (key, pos) pairs, 2 passes of 10 bits, resumable
  std::vector<uint32_t> keys, pos, k2, p2;
  std::vector<uint32_t> count;
  int64_t n, i = 0;
  int phase = 0;  // 0 hist lo, 1 scatter lo, 2 hist hi, 3 scatter hi, 4 done
  explicit Radix(const std::vector<uint32_t>& ids) : keys(ids), pos(ids.size()), k2(ids.size()), p2(ids.size()), count(kBuckets), n(ids.size()) {
    for (int64_t j = 0; j < n; ++j) pos[j] = j;
  }
  void reset(const std::vector<uint32_t>& ids) { keys = ids; for (int64_t j = 0; j < n; ++j) pos[j] = j; i = 0; phase = 0; }
  void prefix() { uint32_t s = 0; for (auto& c : count) { uint32_t t = c; c = s; s += t; } }
  bool step(int64_t m) {  // processes up to m items; false when done
    while (m > 0 && phase < 4) {
      int64_t end = std::min(n, i + m);
      m -= end - i;
      const int shift = phase < 2 ? 0 : kBits;
      const uint32_t* src_k = phase < 2 ? keys.data() : k2.data();
      const uint32_t* src_p = phase < 2 ? pos.data() : p2.data();
      uint32_t* dst_k = phase < 2 ? k2.data() : keys.data();
      uint32_t* dst_p = phase < 2 ? p2.data() : pos.data();
      if (phase % 2 == 0) {
        for (; i < end; ++i) ++count[(src_k[i] >> shift) & (kBuckets - 1)];
      } else {
        for (; i < end; ++i) {
          const uint32_t d = (src_k[i] >> shift) & (kBuckets - 1);
          const uint32_t at = count[d]++;
          dst_k[at] = src_k[i];
          dst_p[at] = src_p[i];
        }
      }
      if (i == n) {
        if (phase % 2 == 0) prefix(); else std::fill(count.begin(), count.end(), 0);
        ++phase; i = 0;
      }
    }
    return phase < 4;
  }
};

static inline void prefetch_row(const float* p) {
  for (int l = 0; l < kDim * 4; l += 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + l, 1, 3);
}

template <typename Side>
void update(float* w, float* s, const std::vector<uint32_t>& rows, const float* g, Side&& side) {
  const int64_t u = rows.size();
  for (int64_t r = 0; r < u; ++r) {
    if (r + 8 < u) { prefetch_row(w + int64_t(rows[r + 8]) * kDim); __builtin_prefetch(s + rows[r + 8], 1, 3); }
    float* row = w + int64_t(rows[r]) * kDim;
    const float* gr = g + (r & 255) * kDim;
    float sq = 0;
    for (int d = 0; d < kDim; ++d) sq += gr[d] * gr[d];
    float& st = s[rows[r]];
    st += sq / kDim;
    const float scale = 0.01f / (std::sqrt(st) + 1e-8f);
    for (int d = 0; d < kDim; ++d) row[d] -= scale * gr[d];
    side();
  }
}

double secs(std::chrono::steady_clock::time_point a) { return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count(); }

int main(int argc, char** argv) {
  const int per_row = argc > 1 ? atoi(argv[1]) : 3;
  std::vector<float> w(kRows * kDim, 0.5f), s(kRows, 0.1f), g(256 * kDim, 0.01f);
  std::mt19937_64 rng(1);
  std::vector<uint32_t> all(kRows);
  for (uint32_t i = 0; i < kRows; ++i) all[i] = i;
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<uint32_t> rows(all.begin(), all.begin() + 55000);
  std::sort(rows.begin(), rows.end());
  std::vector<uint32_t> ids(164000);
  for (auto& x : ids) x = all[std::min<uint64_t>(kRows - 1, uint64_t(std::pow(double(rng() % 1000000 + 1) / 1e6, 8.0) * kRows))];
  Radix radix(ids);
  double ta = 1e9, tb = 1e9, tab = 1e9;
  for (int rep = 0; rep < 15; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    update(w.data(), s.data(), rows, g.data(), [] {});
    ta = std::min(ta, secs(t0));
    radix.reset(ids);
    t0 = std::chrono::steady_clock::now();
    while (radix.step(1 << 20)) {}
    tb = std::min(tb, secs(t0));
    radix.reset(ids);
    t0 = std::chrono::steady_clock::now();
    update(w.data(), s.data(), rows, g.data(), [&] { radix.step(per_row); });
    while (radix.step(1 << 20)) {}
    const double t = secs(t0);
    if (t < tab) tab = t;
  }
  std::printf("per_row %d: update %.2f ms, radix %.2f ms, sum %.2f, interleaved %.2f ms (%.2fx of the sum, %.2fx of the max)\n",
              per_row, ta * 1e3, tb * 1e3, (ta + tb) * 1e3, tab * 1e3, tab / (ta + tb), tab / std::max(ta, tb));
}
