// Pooled lookup inner loops; included once per instruction set (see cpu/isa.h), so
// no #pragma once and no includes here. Needs kVecFloats and cpu/row_sums.h from the
// including namespace.
//
// Each bag is pooled in blocks of kBlock columns whose accumulators stay in vector
// registers; rows are prefetched `ahead` ids ahead in the flat id array, across bag
// boundaries (with one id per bag, a per-bag look-ahead would keep only one miss in
// flight), every cache line of the row.

constexpr int64_t kBlock = 8 * kVecFloats;

// The look-ahead is a window of bytes rather than of ids: wide enough to cover the
// memory latency of random rows, small enough to stay in L1 until the rows are read.
// A/B on an AMD EPYC host (1 thread, 1M-row table): 16 KiB ahead (64 ids of dim 64)
// instead of 16 ids took 0.52-0.61x the time on Zipf ids and 0.77-0.85x on uniform
// ids; rows that are all in cache lose 5-16%.
constexpr int64_t kPrefetchBytes = 16384;
inline int64_t prefetch_ids_ahead(int64_t row_bytes) {
  return std::clamp<int64_t>(kPrefetchBytes / std::max<int64_t>(row_bytes, 1), 16, 128);
}

// Pools columns [c0, c0 + kWidth) of one bag of n ids (kWidth == 0: the runtime
// `width` < kBlock), times psw[j] when kWeighted. ids[j + ahead] is prefetched while it
// is below `prefetch_limit` (the ids left in this thread's range from the bag's first;
// 0: none). kLineRows: every row starts on a cache line, spans whole lines and fits one
// block, so that a block of compile-time width is the whole row.
// An id outside [0, rows) is skipped and sets `bad` (a prefetch of it cannot fault).
template <int64_t kWidth, bool kWeighted, bool kLineRows, typename scalar_t, typename index_t,
          typename acc_t>
inline void pool_columns(const scalar_t* weight, int64_t rows, int64_t dim, int64_t c0,
                         int64_t width, int64_t n, const index_t* ids, const float* psw,
                         int64_t ahead, int64_t prefetch_limit, acc_t scale, scalar_t* out,
                         bool& bad) {
  const int64_t cols = kWidth > 0 ? kWidth : width;
  RowSums<(kWidth > 0 ? kWidth : kBlock), scalar_t, acc_t, (kWidth > 0)> sums;
  for (int64_t j = 0; j < n; ++j) {
    if (j + ahead < prefetch_limit) {
      const scalar_t* next = weight + ids[j + ahead] * dim;
      // When the block is the whole row of whole lines, the line count is a constant
      // and the prefetches unroll. With a row's start anywhere in a line they were a
      // loop with a branch per line; without it (and with the weights' and width's tests
      // decided per call, lookup_bags), a batch of 64-float rows of Zipf ids took 0.74x
      // the time (AMD EPYC Zen 4, session 24; docs/DECISIONS.md).
      constexpr int64_t kRowBytes = kWidth * static_cast<int64_t>(sizeof(scalar_t));
      if constexpr (kLineRows && kWidth > 0 && kRowBytes % 64 == 0) {
        prefetch_aligned_row<kRowBytes>(next);
      } else {
        prefetch_row(next, dim);
      }
    }
    if (id_out_of_range(ids[j], rows)) {
      bad = true;
      continue;
    }
    const scalar_t* row = weight + ids[j] * dim + c0;
    if constexpr (kWeighted) {
      sums.add(row, cols, static_cast<acc_t>(psw[j]));
    } else {
      sums.add(row, cols);
    }
  }
  sums.store(out + c0, cols, scale);
}

// pool_columns for the last `width` (< kBlock) columns: a compile-time width when it
// is half a vector or a whole number of vectors (AVX2: dims 4, 8, 16, 32, 48 ...),
// else the runtime one.
template <bool kWeighted, bool kLineRows, typename scalar_t, typename index_t, typename acc_t>
inline void pool_tail(const scalar_t* weight, int64_t rows, int64_t dim, int64_t c0,
                      int64_t width, int64_t n, const index_t* ids, const float* psw,
                      int64_t ahead, int64_t prefetch_limit, acc_t scale, scalar_t* out,
                      bool& bad) {
  const auto pool = [&]<int64_t kWidth>() {
    pool_columns<kWidth, kWeighted, kLineRows>(weight, rows, dim, c0, width, n, ids, psw, ahead,
                                               prefetch_limit, scale, out, bad);
  };
  if (width == kVecFloats / 2) return pool.template operator()<kVecFloats / 2>();
  switch (width % kVecFloats == 0 ? width / kVecFloats : 0) {
    case 1: return pool.template operator()<kVecFloats>();
    case 2: return pool.template operator()<2 * kVecFloats>();
    case 3: return pool.template operator()<3 * kVecFloats>();
    case 4: return pool.template operator()<4 * kVecFloats>();
    case 6: return pool.template operator()<6 * kVecFloats>();
    default: return pool.template operator()<0>();
  }
}

// lookup_bags for one case of weights and row alignment.
template <bool kWeighted, bool kLineRows, typename scalar_t, typename index_t>
bool lookup_bags_as(const scalar_t* weight, int64_t rows, int64_t dim, const index_t* ids,
                    const index_t* offsets, const float* psw, bool mean, scalar_t* out,
                    int64_t out_stride, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t last = offsets[end];
  const int64_t ahead = prefetch_ids_ahead(dim * static_cast<int64_t>(sizeof(scalar_t)));
  for (int64_t j = offsets[begin]; j < std::min(offsets[begin] + ahead, last); ++j) {
    prefetch_row(weight + ids[j] * dim, dim);
  }
  bool bad = false;
  for (int64_t b = begin; b < end; ++b) {
    const int64_t start = offsets[b], n = offsets[b + 1] - start;
    const acc_t scale = (mean && n > 0) ? acc_t(1) / acc_t(n) : acc_t(1);
    const index_t* bag_ids = ids + start;
    const float* bag_w = psw ? psw + start : nullptr;
    scalar_t* o = out + b * out_stride;
    int64_t c0 = 0;
    for (; c0 + kBlock <= dim; c0 += kBlock) {
      pool_columns<kBlock, kWeighted, kLineRows>(weight, rows, dim, c0, kBlock, n, bag_ids, bag_w,
                                                 ahead, c0 == 0 ? last - start : 0, scale, o,
                                                 bad);
    }
    if (c0 < dim) {
      pool_tail<kWeighted, kLineRows>(weight, rows, dim, c0, dim - c0, n, bag_ids, bag_w, ahead,
                                      c0 == 0 ? last - start : 0, scale, o, bad);
    }
  }
  return !bad;
}

// Bags [begin, end) of a CSR batch (offsets already checked) into rows out + b *
// out_stride. Returns false if some id lies outside [0, rows): it was skipped, and the
// caller raises. Weighted or not, and rows on cache lines or not, are decided here
// once rather than per id.
template <typename scalar_t, typename index_t>
bool lookup_bags(const scalar_t* weight, int64_t rows, int64_t dim, const index_t* ids,
                 const index_t* offsets, const float* psw, bool mean, scalar_t* out,
                 int64_t out_stride, int64_t begin, int64_t end) {
  const bool line_rows = reinterpret_cast<uintptr_t>(weight) % 64 == 0 &&
                         dim * static_cast<int64_t>(sizeof(scalar_t)) % 64 == 0 && dim <= kBlock;
  const auto run = [&]<bool kWeighted, bool kLineRows>() {
    return lookup_bags_as<kWeighted, kLineRows>(weight, rows, dim, ids, offsets, psw, mean, out,
                                                out_stride, begin, end);
  };
  if (psw != nullptr) {
    return line_rows ? run.template operator()<true, true>()
                     : run.template operator()<true, false>();
  }
  return line_rows ? run.template operator()<false, true>()
                   : run.template operator()<false, false>();
}
