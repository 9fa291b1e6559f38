// Inner loops of DLRM's pairwise dot interaction; included once per instruction set
// (see cpu/isa.h, which defines kVecBytes), so no #pragma once and no includes here.
//
// Per sample, x is n = F + 1 vectors of dim D (the dense vector, then the F
// embeddings). Forward writes [dense, x_i . x_j for i < j, row-major]: the upper
// triangle of X X^T. Backward gives grad X = G X, with G the symmetric matrix of the
// pair gradients (zero diagonal). Both are products of matrices of a few KiB that stay
// in L1, computed by one register-blocked micro-kernel: R rows x C vectors of lanes,
// each lane summed in order over k (no sum is reassociated, so the result does not
// depend on the blocking). GCC vector types hold the lanes; a plain local array of
// sums is left in scalar registers by the compiler.

template <typename T>
struct Lanes {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int64_t kCount = kVecBytes / sizeof(T);
};

template <typename T>
inline typename Lanes<T>::type load_lanes(const T* p) {
  typename Lanes<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// acc[r][c] = sum over k of a[r * a_r + k * a_k] * b[k * b_k + c * lanes .. + lanes).
template <int R, int C, typename T>
inline void micro_kernel(int64_t K, const T* a, int64_t a_r, int64_t a_k, const T* b,
                         int64_t b_k, typename Lanes<T>::type (*acc)[4]) {
  constexpr int64_t L = Lanes<T>::kCount;
  typename Lanes<T>::type s[R][C] = {};
  for (int64_t k = 0; k < K; ++k) {
    typename Lanes<T>::type v[C];
    for (int c = 0; c < C; ++c) v[c] = load_lanes(b + k * b_k + c * L);
    for (int r = 0; r < R; ++r) {
      const T x = a[r * a_r + k * a_k];
      for (int c = 0; c < C; ++c) s[r][c] += x * v[c];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) acc[r][c] = s[r][c];
  }
}

// micro_kernel for `rows` (1 to 4) rows and `blocks` (1 to 4) vectors.
template <typename T>
inline void block_product(int64_t rows, int64_t blocks, int64_t K, const T* a, int64_t a_r,
                          int64_t a_k, const T* b, int64_t b_k,
                          typename Lanes<T>::type (*acc)[4]) {
#define RECIS_MICRO(R, C) \
  case (R - 1) * 4 + C - 1: return micro_kernel<R, C>(K, a, a_r, a_k, b, b_k, acc)
  switch ((rows - 1) * 4 + blocks - 1) {
    RECIS_MICRO(1, 1); RECIS_MICRO(1, 2); RECIS_MICRO(1, 3); RECIS_MICRO(1, 4);
    RECIS_MICRO(2, 1); RECIS_MICRO(2, 2); RECIS_MICRO(2, 3); RECIS_MICRO(2, 4);
    RECIS_MICRO(3, 1); RECIS_MICRO(3, 2); RECIS_MICRO(3, 3); RECIS_MICRO(3, 4);
    RECIS_MICRO(4, 1); RECIS_MICRO(4, 2); RECIS_MICRO(4, 3); RECIS_MICRO(4, 4);
    default: break;
  }
#undef RECIS_MICRO
}

// Padded width (a multiple of the lane count) of the per-sample scratch matrices.
template <typename T>
inline int64_t padded(int64_t n) {
  constexpr int64_t L = Lanes<T>::kCount;
  return (n + L - 1) / L * L;
}

// Forward for samples [begin, end). xt: scratch [D, padded(n)], zeroed by the caller;
// gram: scratch [n, padded(n)].
template <typename T>
void interact_forward(const T* dense, const T* emb, int64_t n, int64_t dim, T* out,
                      int64_t begin, int64_t end, T* xt, T* gram) {
  constexpr int64_t L = Lanes<T>::kCount;
  const int64_t n_pad = padded<T>(n), width = dim + n * (n - 1) / 2;
  typename Lanes<T>::type acc[4][4];
  for (int64_t b = begin; b < end; ++b) {
    const T* x0 = dense + b * dim;
    const T* xe = emb + b * (n - 1) * dim;
    for (int64_t d = 0; d < dim; ++d) xt[d * n_pad] = x0[d];
    for (int64_t i = 1; i < n; ++i) {
      for (int64_t d = 0; d < dim; ++d) xt[d * n_pad + i] = xe[(i - 1) * dim + d];
    }
    // Rows i .. i + rows - 1 of X X^T from the block holding column i + 1 on: two rows
    // of up to four vectors, or four rows of up to two (8 accumulators either way).
    for (int64_t i = 0; i + 1 < n; ) {
      const int64_t first = (i + 1) / L * L;
      const int64_t rows = std::min<int64_t>(n - first <= 2 * L ? 4 : 2, n - 1 - i);
      for (int64_t j0 = first; j0 < n; j0 += 4 * L) {
        const int64_t blocks = std::min<int64_t>(4, (n - j0 + L - 1) / L);
        block_product<T>(rows, blocks, dim, xt + i, 1, n_pad, xt + j0, n_pad, acc);
        for (int64_t r = 0; r < rows; ++r) {
          std::memcpy(gram + (i + r) * n_pad + j0, acc[r], blocks * sizeof(acc[r][0]));
        }
      }
      i += rows;
    }
    T* o = out + b * width;
    std::copy(x0, x0 + dim, o);
    o += dim;
    for (int64_t i = 0; i + 1 < n; ++i) {
      o = std::copy(gram + i * n_pad + i + 1, gram + i * n_pad + n, o);
    }
  }
}

// Backward for samples [begin, end). sym: scratch [n, n]; x and gx: scratch
// [n, padded(D)], x with zeroed padding.
template <typename T>
void interact_backward(const T* grad, const T* dense, const T* emb, int64_t n, int64_t dim,
                       T* grad_dense, T* grad_emb, int64_t begin, int64_t end, T* sym, T* x,
                       T* gx) {
  constexpr int64_t L = Lanes<T>::kCount;
  const int64_t d_pad = padded<T>(dim), width = dim + n * (n - 1) / 2;
  typename Lanes<T>::type acc[4][4];
  for (int64_t b = begin; b < end; ++b) {
    const T* g = grad + b * width;
    const T* gp = g + dim;
    for (int64_t i = 0; i < n; ++i) {
      sym[i * n + i] = T(0);
      for (int64_t j = i + 1; j < n; ++j) sym[i * n + j] = sym[j * n + i] = *gp++;
    }
    std::copy(dense + b * dim, dense + (b + 1) * dim, x);
    const T* xe = emb + b * (n - 1) * dim;
    for (int64_t i = 1; i < n; ++i) std::copy(xe + (i - 1) * dim, xe + i * dim, x + i * d_pad);
    // Four rows at a time share each load of x_j while they fit 8 accumulators.
    const int64_t row_step = dim <= 2 * L ? 4 : 2;
    for (int64_t i = 0; i < n; i += row_step) {
      const int64_t rows = std::min(row_step, n - i);
      for (int64_t d0 = 0; d0 < dim; d0 += 4 * L) {
        const int64_t blocks = std::min<int64_t>(4, (dim - d0 + L - 1) / L);
        block_product<T>(rows, blocks, n, sym + i * n, n, 1, x + d0, d_pad, acc);
        for (int64_t r = 0; r < rows; ++r) {
          std::memcpy(gx + (i + r) * d_pad + d0, acc[r], blocks * sizeof(acc[r][0]));
        }
      }
    }
    T* gd = grad_dense + b * dim;
    for (int64_t d = 0; d < dim; ++d) gd[d] = g[d] + gx[d];
    T* ge = grad_emb + b * (n - 1) * dim;
    for (int64_t i = 1; i < n; ++i) ge = std::copy(gx + i * d_pad, gx + i * d_pad + dim, ge);
  }
}
