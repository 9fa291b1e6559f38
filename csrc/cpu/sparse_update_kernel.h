// Inner loops of the fused sparse-optimizer updates; included once per instruction
// set (see cpu/isa.h), so no #pragma once and no includes here. Needs SortedGrad,
// Dim and AnyDim from the including file (cpu/sparse_update.cpp), and kVecFloats and
// cpu/row_sums.h from the including namespace.
//
// One pass per unique row, in parallel over rows (no two threads write one row): the
// row's gradient is reduced from grad_out[bag] * multiplier into a dim-sized buffer,
// and the optimizer math is applied to the row and its state while they are in cache.
// The inner loops run over the contiguous embedding dimension and vectorise.

// Updates are bound by the latency of reading random rows: request every cache
// line of the row (and its state) a few unique rows ahead so that several misses
// are in flight at once. perf shows the loop stalled on those prefetches (the core's
// L1 miss buffers are full), so when the call's tables outgrow the cache
// (cpu/cache_size.h) their rows are also requested into L2 further ahead. A/B in one
// process (the order of the two rotated per step; row-wise Adagrad, step with dedup,
// dim 64, Intel host, session 10): 1M rows 0.945x the time with 8192 bags of ~20 Zipf
// ids (SGD 0.931x; 2 threads 0.953x) and 0.884x with 1024 bags; 300k rows 0.948x with
// 1024 bags. On 100k rows (25 MiB) it lost 1.05-1.07x with 1024-2048 bags (0.961x with
// 8192). Adam (8192 bags, 4 tables): 0.92x. On an AMD EPYC (Zen 4, 32 MiB L3, session
// 24; docs/DECISIONS.md) with 2048 bags of ~10 uniform ids it gained from 20 MiB of
// tables on (4 x 20k-100k rows: 0.80-0.92x; 8 x 100k: 0.75x) and lost 1.05x on 10 MiB.
constexpr int64_t kPrefetchRows = 8;
constexpr int64_t kPrefetchRowsToL2 = 64;
// grad_out rows: 8 or 32 ahead instead of 16 made no difference (0.995x, 1.01x), and
// also requesting them into L2 32 or 64 ahead cost 1.07x (SGD, 2 threads, kernels
// shape; ab_builds.py, Intel host, session 26).
constexpr int64_t kPrefetchGrads = 16;

// x[d] = sqrt(x[d]). A plain loop over std::sqrt is not vectorised (the build keeps
// errno semantics, so each sqrt may branch to a libm call). SSE2 is the x86-64
// baseline, so its packed sqrt needs no runtime dispatch; the AVX2 and AVX-512 builds
// take 8 floats at a time (Adam at dim 128 under AVX-512: 0.947x the step's time of 4
// at a time; session 13, in-process A/B).
inline void sqrt_array(float* x, int64_t n) {
  int64_t d = 0;
#if defined(__SSE2__)
  if constexpr (kVecFloats >= 8) {
    for (; d + 8 <= n; d += 8) _mm256_storeu_ps(x + d, _mm256_sqrt_ps(_mm256_loadu_ps(x + d)));
  }
  for (; d + 4 <= n; d += 4) _mm_storeu_ps(x + d, _mm_sqrt_ps(_mm_loadu_ps(x + d)));
#endif
  for (; d < n; ++d) x[d] = std::sqrt(x[d]);
}

inline void sqrt_array(double* x, int64_t n) {
  int64_t d = 0;
#if defined(__SSE2__)
  for (; d + 2 <= n; d += 2) _mm_storeu_pd(x + d, _mm_sqrt_pd(_mm_loadu_pd(x + d)));
#endif
  for (; d < n; ++d) x[d] = std::sqrt(x[d]);
}

// The width of D when it is known at compile time, else 0.
template <typename D>
constexpr int64_t kFixedDim = 0;
template <int64_t k>
constexpr int64_t kFixedDim<Dim<k>> = k;

// acc = sum over sorted positions k in [begin, end) of grad_out[bag[k]] * scale[k]; in
// vector registers (RowSums) where the width allows, else in acc itself.
template <typename scalar_t, typename D>
inline void reduce_row(const SortedGrad<scalar_t>& grad, int64_t begin, int64_t end,
                       scalar_t* acc, D dim) {
  const auto for_each_grad_row = [&](const auto& add) {
    for (int64_t k = begin; k < end; ++k) {
      // grad_out rows are read in id order, i.e. at random: fetch a few ahead.
      if (k + kPrefetchGrads < grad.nnz) {
        prefetch_row(grad.grad_out + grad.bag(k + kPrefetchGrads) * grad.row_stride, dim);
      }
      add(grad.grad_out + grad.bag(k) * grad.row_stride, k);
    }
  };
  if constexpr (!kSumsInVectors<kFixedDim<D>, scalar_t>) {
    for (int64_t d = 0; d < dim; ++d) acc[d] = scalar_t(0);
    for_each_grad_row([&](const scalar_t* g, int64_t k) {
      if (grad.scale == nullptr) {
        for (int64_t d = 0; d < dim; ++d) acc[d] += g[d];
      } else {
        const scalar_t sc = grad.scale[k];
        for (int64_t d = 0; d < dim; ++d) acc[d] += sc * g[d];
      }
    });
  } else {
    RowSums<kFixedDim<D>, scalar_t, scalar_t> sums;
    for_each_grad_row([&](const scalar_t* g, int64_t k) {
      if (grad.scale == nullptr) {
        sums.add(g, dim);
      } else {
        sums.add(g, dim, grad.scale[k]);
      }
    });
    sums.store(acc, dim, scalar_t(1));
  }
}

// The row's gradient and the optimizer's scratch: local arrays when the width is a
// compile-time constant (with the loops unrolled they live in registers), else
// buffers of the runtime width.
template <typename scalar_t, typename D>
struct RowBuffers {
  explicit RowBuffers(D) {}
  scalar_t acc[D::value], tmp[D::value];
};

template <typename scalar_t>
struct RowBuffers<scalar_t, AnyDim> {
  explicit RowBuffers(AnyDim dim) : storage(2 * dim.value), acc(storage.data()),
                                    tmp(storage.data() + dim.value) {}
  std::vector<scalar_t> storage;
  scalar_t *acc, *tmp;
};

template <typename scalar_t, typename Opt, typename D>
void update_rows(const RowSegments& r, const SortedGrad<scalar_t>& grad, const Opt& opt, D dim,
                 bool prefetch_to_l2) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(dim, 1));
  at::parallel_for(0, r.size(), grain, [&](int64_t begin, int64_t end) {
    RowBuffers<scalar_t, D> buf(dim);
    for (int64_t u = begin; u < end; ++u) {
      if (prefetch_to_l2 && u + kPrefetchRowsToL2 < end) {
        opt.for_each_array(r.unique_ids[u + kPrefetchRowsToL2], [](const auto* p, int64_t n) {
          prefetch_row<PrefetchTo::kL2>(p, n);
        });
      }
      if (u + kPrefetchRows < end) {
        opt.for_each_array(r.unique_ids[u + kPrefetchRows],
                           [](const auto* p, int64_t n) { prefetch_row(p, n); });
      }
      reduce_row(grad, r.seg[u], r.seg[u + 1], buf.acc, dim);
      opt.apply(r.unique_ids[u], buf.acc, buf.tmp, dim);
    }
  });
}

// Runs `opt.apply(row, grad_of_row, scratch, dim)` once per unique row, in parallel
// over rows; the common widths are compiled with their width as a constant.
template <typename scalar_t, typename Opt>
void for_each_unique_row(const RowSegments& r, const SortedGrad<scalar_t>& grad, const Opt& opt,
                         bool to_l2) {
  switch (grad.dim) {
    case 16: return update_rows(r, grad, opt, Dim<16>{}, to_l2);
    case 32: return update_rows(r, grad, opt, Dim<32>{}, to_l2);
    case 64: return update_rows(r, grad, opt, Dim<64>{}, to_l2);
    case 128: return update_rows(r, grad, opt, Dim<128>{}, to_l2);
    default: return update_rows(r, grad, opt, AnyDim{grad.dim}, to_l2);
  }
}

// SGD without weight decay is linear in the gradient, so each occurrence of a row can
// be applied on its own, in batch order: no dedup, no per-row reduction, one pass over
// the ids like the forward lookup (repeated rows stay in cache). With `split`, each
// thread owns a contiguous block of rows and scans every id, so a row sees its updates
// in the same order whatever the thread count: the result is bitwise the same on 1 or N
// threads. A row's owner is a multiply-high (row * owners / rows in fixed point), not a
// modulo: a 64-bit division per id cost more than updating a 64-byte row (2 threads,
// Zipf ids on 4 x 100k rows: 0.80x the time of `row % owners`).
template <typename scalar_t, typename index_t>
void sgd_by_occurrence(scalar_t* weight, int64_t rows, int64_t dim, const index_t* ids,
                       const index_t* offsets, int64_t num_bags, const scalar_t* psw, bool mean,
                       const scalar_t* grad_out, int64_t grad_stride, scalar_t lr, bool split) {
  const int64_t nnz = offsets[num_bags];
  constexpr int64_t kPrefetchIds = 16;
  constexpr int64_t kIdsPerOwner = 16384;  // below this a thread's scan costs more than it saves
  constexpr int64_t kRowsPerOwner = 64;
  const int64_t owners =
      split ? std::clamp<int64_t>(std::min(nnz / kIdsPerOwner, rows / kRowsPerOwner), 1,
                                  std::max(at::get_num_threads(), 1))
            : 1;
  using u128 = unsigned __int128;
  // ceil(owners * 2^64 / rows), which fits 64 bits when there are owners to tell
  // apart: then rows >= owners * kRowsPerOwner.
  const uint64_t scale =
      owners == 1 ? 0
                  : static_cast<uint64_t>(((static_cast<u128>(owners) << 64) + rows - 1) /
                                          static_cast<uint64_t>(rows));
  at::parallel_for(0, owners, 1, [&](int64_t first, int64_t last) {
    const auto mine = [&](int64_t row) {
      if (owners == 1) return true;
      const auto o = std::min<int64_t>(
          static_cast<int64_t>((static_cast<u128>(row) * scale) >> 64), owners - 1);
      return o >= first && o < last;
    };
    int64_t b = 0;
    for (int64_t j = 0; j < nnz; ++j) {
      if (j + kPrefetchIds < nnz) {
        const int64_t ahead = ids[j + kPrefetchIds];
        if (mine(ahead)) prefetch_row(weight + ahead * dim, dim);
      }
      while (offsets[b + 1] <= j) ++b;  // skips empty bags
      const int64_t row = ids[j];
      if (!mine(row)) continue;
      scalar_t step = psw ? lr * psw[j] : lr;
      if (mean) step /= static_cast<scalar_t>(offsets[b + 1] - offsets[b]);
      scalar_t* w = weight + row * dim;
      const scalar_t* g = grad_out + b * grad_stride;
      for (int64_t d = 0; d < dim; ++d) w[d] -= step * g[d];
    }
  });
}

// --- optimizer math on one row (g: the row's reduced gradient, dim values) ---
// Each also names, for the prefetches, the arrays it reads and writes of a row:
// for_each_array(row, f) calls f(pointer, length) for each.

template <typename scalar_t>
struct SgdRow {
  scalar_t* weight;
  int64_t dim;
  scalar_t lr, weight_decay;
  template <typename F>
  void for_each_array(int64_t row, const F& f) const {
    f(weight + row * dim, dim);
  }
  template <typename D>
  void apply(int64_t row, scalar_t* g, scalar_t* /*tmp*/, D n) const {
    scalar_t* w = weight + row * dim;
    for (int64_t d = 0; d < n; ++d) w[d] -= lr * (g[d] + weight_decay * w[d]);
  }
};

template <typename scalar_t>
struct AdagradRow {
  scalar_t* weight;
  scalar_t* sum;  // [rows, dim]
  int64_t dim;
  scalar_t lr, eps, weight_decay;
  template <typename F>
  void for_each_array(int64_t row, const F& f) const {
    f(weight + row * dim, dim);
    f(sum + row * dim, dim);
  }
  template <typename D>
  void apply(int64_t row, scalar_t* g, scalar_t* root, D n) const {
    scalar_t* w = weight + row * dim;
    scalar_t* s = sum + row * dim;
    for (int64_t d = 0; d < n; ++d) {
      g[d] += weight_decay * w[d];
      s[d] += g[d] * g[d];
      root[d] = s[d];
    }
    sqrt_array(root, n);
    for (int64_t d = 0; d < n; ++d) w[d] -= lr * g[d] / (root[d] + eps);
  }
};

// Eight values of T in one GCC vector type (vector_size cannot take a dependent type).
template <typename T>
struct EightLanes;
template <>
struct EightLanes<float> {
  typedef float type __attribute__((vector_size(8 * sizeof(float))));
};
template <>
struct EightLanes<double> {
  typedef double type __attribute__((vector_size(8 * sizeof(double))));
};

// FBGEMM's EXACT_ROWWISE_ADAGRAD: one accumulator per row, s += mean(g^2).
template <typename scalar_t>
struct RowWiseAdagradRow {
  scalar_t* weight;
  scalar_t* sum;  // [rows]
  int64_t dim;
  scalar_t lr, eps, weight_decay;
  template <typename F>
  void for_each_array(int64_t row, const F& f) const {
    f(weight + row * dim, dim);
    f(sum + row, 1);
  }
  template <typename D>
  void apply(int64_t row, scalar_t* g, scalar_t* /*tmp*/, D n) const {
    scalar_t* w = weight + row * dim;
    // Without decay the row's new scale needs only g, so the sqrt chain below runs
    // while the weight row is still arriving from memory.
    if (weight_decay != scalar_t(0)) {
      for (int64_t d = 0; d < n; ++d) g[d] += weight_decay * w[d];
    }
    // Sum of squares in kLanes independent partial sums: one running sum would be a
    // serial dependency chain the compiler may not reorder (no fast-math). The lanes
    // are a vector type: as a plain array, GCC's AVX-512 build summed them with
    // shuffles and scalar adds.
    constexpr int64_t kLanes = 8;
    using Lanes = typename EightLanes<scalar_t>::type;
    Lanes part = {};
    int64_t d = 0;
    for (; d + kLanes <= n; d += kLanes) {
      Lanes x;
      __builtin_memcpy(&x, g + d, sizeof x);
      part += x * x;
    }
    scalar_t sq = 0;
    for (; d < n; ++d) sq += g[d] * g[d];
    for (int64_t l = 0; l < kLanes; ++l) sq += part[l];
    sum[row] += sq / static_cast<scalar_t>(n);
    const scalar_t step = lr / (std::sqrt(sum[row]) + eps);
    for (d = 0; d < n; ++d) w[d] -= step * g[d];
  }
};

// torch.optim.Adam (L2 weight decay) / AdamW (decoupled decay), one step `step`.
template <typename scalar_t>
struct AdamRow {
  scalar_t* weight;
  scalar_t* exp_avg;
  scalar_t* exp_avg_sq;
  int64_t dim;
  scalar_t lr, beta1, beta2, eps, weight_decay;
  bool decoupled;
  scalar_t step_size, inv_bc2_sqrt;  // lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t)
  template <typename F>
  void for_each_array(int64_t row, const F& f) const {
    f(weight + row * dim, dim);
    f(exp_avg + row * dim, dim);
    f(exp_avg_sq + row * dim, dim);
  }
  template <typename D>
  void apply(int64_t row, scalar_t* g, scalar_t* root, D n) const {
    scalar_t* w = weight + row * dim;
    scalar_t* m = exp_avg + row * dim;
    scalar_t* v = exp_avg_sq + row * dim;
    const scalar_t l2 = decoupled ? scalar_t(0) : weight_decay;
    const scalar_t shrink = decoupled ? scalar_t(1) - lr * weight_decay : scalar_t(1);
    for (int64_t d = 0; d < n; ++d) {
      const scalar_t gd = g[d] + l2 * w[d];
      m[d] += (scalar_t(1) - beta1) * (gd - m[d]);
      v[d] = beta2 * v[d] + (scalar_t(1) - beta2) * gd * gd;
      root[d] = v[d];
    }
    sqrt_array(root, n);
    for (int64_t d = 0; d < n; ++d) {
      w[d] = w[d] * shrink - step_size * m[d] / (root[d] * inv_bc2_sqrt + eps);
    }
  }
};

// The entry points of this instruction set, for the dispatch in sparse_update.cpp.
struct Kernels {
  template <typename T> using Sgd = SgdRow<T>;
  template <typename T> using Adagrad = AdagradRow<T>;
  template <typename T> using RowWiseAdagrad = RowWiseAdagradRow<T>;
  template <typename T> using Adam = AdamRow<T>;

  template <typename scalar_t, typename Opt>
  static void update(const RowSegments& r, const SortedGrad<scalar_t>& grad, const Opt& opt,
                     bool prefetch_to_l2) {
    for_each_unique_row(r, grad, opt, prefetch_to_l2);
  }

  template <typename scalar_t, typename index_t>
  static void sgd_without_decay(scalar_t* weight, int64_t rows, int64_t dim, const index_t* ids,
                                const index_t* offsets, int64_t num_bags, const scalar_t* psw,
                                bool mean, const scalar_t* grad_out, int64_t grad_stride,
                                scalar_t lr, bool split) {
    sgd_by_occurrence(weight, rows, dim, ids, offsets, num_bags, psw, mean, grad_out, grad_stride,
                      lr, split);
  }

  // out[u] = the reduced gradient of unique row u.
  template <typename scalar_t>
  static void reduce_all(const RowSegments& r, const SortedGrad<scalar_t>& grad, scalar_t* out) {
    const int64_t dim = grad.dim;
    const int64_t grain = std::max<int64_t>(1, 4096 / dim);
    at::parallel_for(0, r.size(), grain, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        reduce_row(grad, r.seg[u], r.seg[u + 1], out + u * dim, AnyDim{dim});
      }
    });
  }
};
