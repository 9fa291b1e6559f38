// Running sums of rows over a compile-time width, for the kernels' inner loops;
// included once per instruction set (see cpu/isa.h) inside its namespace, after
// kVecFloats (floats per vector register), so no #pragma once and no includes here.
//
// RowSums<kWidth, scalar_t, acc_t> adds rows (optionally times a weight) into kWidth
// sums and stores them (times a scale). With kFixed == false the width is given per
// call and is at most kWidth. Float rows a whole number of vectors wide keep their sums
// in GCC vector types: the plain array loops became scalar adds and shuffles for 16
// columns under AVX2 and AVX-512 (a lookup of one id per bag of dim 16 took 17.2 ns per
// id with AVX-512 against 12.6 with SSE2; 10.5 with the vector types). Either way each
// column is summed in the same order; only where the compiler fuses a multiply and an
// add may differ (docs/DECISIONS.md).

template <int64_t kWidth, typename scalar_t, typename acc_t, bool kFixed = true>
struct RowSums {
  acc_t acc[kWidth] = {};
  // Unweighted sums add without a multiply: an add has half an FMA's latency on recent
  // x86 cores, and each sum is one dependency chain across the rows added.
  void add(const scalar_t* row, int64_t cols) {
    for (int64_t d = 0; d < (kFixed ? kWidth : cols); ++d) acc[d] += static_cast<acc_t>(row[d]);
  }
  void add(const scalar_t* row, int64_t cols, acc_t w) {
    for (int64_t d = 0; d < (kFixed ? kWidth : cols); ++d) {
      acc[d] += w * static_cast<acc_t>(row[d]);
    }
  }
  void store(scalar_t* out, int64_t cols, acc_t scale) const {
    for (int64_t d = 0; d < (kFixed ? kWidth : cols); ++d) {
      out[d] = static_cast<scalar_t>(acc[d] * scale);
    }
  }
};

// Whether RowSums<kWidth, T, T> keeps its sums in vector registers: float rows of at
// most 8 vectors, so that the sums and the loop's own values fit the 16 registers
// (AVX2's 128-column sums in 16 vectors were no faster than the array loop).
template <int64_t kWidth, typename T>
constexpr bool kSumsInVectors =
    std::is_same_v<T, float> && kWidth > 0 && kWidth % kVecFloats == 0 &&
    kWidth / kVecFloats <= 8;

template <int64_t kWidth>
  requires(kSumsInVectors<kWidth, float>)
struct RowSums<kWidth, float, float, true> {
  using Vec = float __attribute__((vector_size(kVecFloats * sizeof(float))));
  static constexpr int64_t kVecs = kWidth / kVecFloats;
  Vec acc[kVecs] = {};
  static Vec load(const float* p) {
    Vec v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
  }
  void add(const float* row, int64_t /*cols*/) {
    for (int64_t v = 0; v < kVecs; ++v) acc[v] += load(row + v * kVecFloats);
  }
  void add(const float* row, int64_t /*cols*/, float w) {
    for (int64_t v = 0; v < kVecs; ++v) acc[v] += w * load(row + v * kVecFloats);
  }
  void store(float* out, int64_t /*cols*/, float scale) const {
    for (int64_t v = 0; v < kVecs; ++v) {
      const Vec o = acc[v] * scale;
      __builtin_memcpy(out + v * kVecFloats, &o, sizeof o);
    }
  }
};
