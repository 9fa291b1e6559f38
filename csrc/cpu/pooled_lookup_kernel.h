// Pooled lookup inner loops; included once per instruction set (see cpu/isa.h), so
// no #pragma once and no includes here. Needs kVecFloats from the including namespace.
//
// Each bag is pooled in blocks of kBlock columns whose accumulators stay in vector
// registers; rows are prefetched kPrefetchDistance ids ahead (and the first rows of
// the next bag while this one is pooled), every cache line of the row.

constexpr int64_t kPrefetchDistance = 8;
constexpr int64_t kBlock = 8 * kVecFloats;

// Pools columns [c0, c0 + width) of one bag of n ids; width < kBlock only for the tail.
template <bool kFull, typename scalar_t, typename index_t, typename acc_t>
inline void pool_columns(const scalar_t* weight, int64_t dim, int64_t c0, int64_t width,
                         int64_t n, const index_t* ids, const float* psw, bool prefetch,
                         acc_t scale, scalar_t* out) {
  acc_t acc[kBlock] = {};
  for (int64_t j = 0; j < n; ++j) {
    if (prefetch && j + kPrefetchDistance < n) {
      const scalar_t* ahead = weight + ids[j + kPrefetchDistance] * dim;
      // When the block is the whole row the line count is a constant and the prefetch
      // loop unrolls (~6% on Zipf ids).
      if (kFull && dim == kBlock) {
        prefetch_row(ahead, kBlock);
      } else {
        prefetch_row(ahead, dim);
      }
    }
    const scalar_t* row = weight + ids[j] * dim + c0;
    const acc_t w = psw ? static_cast<acc_t>(psw[j]) : acc_t(1);
    if constexpr (kFull) {
      for (int64_t d = 0; d < kBlock; ++d) acc[d] += w * static_cast<acc_t>(row[d]);
    } else {
      for (int64_t d = 0; d < width; ++d) acc[d] += w * static_cast<acc_t>(row[d]);
    }
  }
  for (int64_t d = 0; d < width; ++d) out[c0 + d] = static_cast<scalar_t>(acc[d] * scale);
}

// Bags [begin, end) of a CSR batch into rows out + b * out_stride; ids are already
// checked to be in range.
template <typename scalar_t, typename index_t>
void lookup_bags(const scalar_t* weight, int64_t dim, const index_t* ids, const index_t* offsets,
                 const float* psw, bool mean, scalar_t* out, int64_t out_stride, int64_t begin,
                 int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t b = begin; b < end; ++b) {
    const int64_t start = offsets[b], n = offsets[b + 1] - start;
    if (b + 1 < end) {
      const int64_t next = offsets[b + 1], ahead = std::min<int64_t>(
                                               offsets[b + 2] - next, kPrefetchDistance);
      for (int64_t j = 0; j < ahead; ++j) prefetch_row(weight + ids[next + j] * dim, dim);
    }
    const acc_t scale = (mean && n > 0) ? acc_t(1) / acc_t(n) : acc_t(1);
    const index_t* bag_ids = ids + start;
    const float* bag_w = psw ? psw + start : nullptr;
    scalar_t* o = out + b * out_stride;
    int64_t c0 = 0;
    for (; c0 + kBlock <= dim; c0 += kBlock) {
      pool_columns<true>(weight, dim, c0, kBlock, n, bag_ids, bag_w, c0 == 0, scale, o);
    }
    if (c0 < dim) {
      pool_columns<false>(weight, dim, c0, dim - c0, n, bag_ids, bag_w, c0 == 0, scale, o);
    }
  }
}
