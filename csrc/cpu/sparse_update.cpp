// CPU fused sparse-optimizer kernels and the per-unique-row gradient.
//
// One pass per unique row: the ids are deduplicated first (row_dedup.h), then
// at::parallel_for runs over the unique rows, so no two threads ever write one
// row. Each row's gradient is reduced straight from grad_out[bag] * weight (÷ bag
// length when mean) into a dim-sized per-thread buffer - nothing nnz x dim is ever
// materialised - and the optimizer math is applied to the row and its state while
// they are in cache. The inner loops run over the contiguous embedding dimension
// so the compiler vectorises them.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <tuple>
#include <vector>

#include "cpu/row_dedup.h"
#include "cpu/sparse_update_checks.h"

namespace recis {
namespace {

// Updates are bound by the latency of reading random rows: request every cache
// line of the row (and its state) a few unique rows ahead so that several misses
// are in flight at once.
constexpr int64_t kPrefetchRows = 8;
constexpr int64_t kPrefetchGrads = 4;

// x[d] = sqrt(x[d]). A plain loop over std::sqrt is not vectorised (the build keeps
// errno semantics, so each sqrt may branch to a libm call); SSE2 is the x86-64
// baseline, so its packed sqrt needs no runtime dispatch.
inline void sqrt_array(float* x, int64_t n) {
  int64_t d = 0;
#if defined(__SSE2__)
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

template <typename T>
inline void prefetch_row(const T* row, int64_t n, bool write = true) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  if (write) {
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 1);
  } else {
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0);
  }
}

// The bag-form gradient of one table in the order of the deduplicated ids: for
// each sorted position k its bag and its multiplier (per-sample weight, ÷ bag
// length when mean), gathered once so that the per-row reduction streams them
// instead of chasing position -> bag through memory.
template <typename scalar_t>
struct SortedGrad {
  std::vector<int64_t> bag;     // [nnz]
  std::vector<scalar_t> scale;  // [nnz]; empty when every multiplier is 1
  const scalar_t* grad_out;
  int64_t dim;

  template <typename index_t>
  SortedGrad(const RowSegments& r, const index_t* offsets, const scalar_t* psw, bool mean,
             const scalar_t* grad_out_, int64_t dim_)
      : grad_out(grad_out_), dim(dim_) {
    const int64_t nnz = static_cast<int64_t>(r.pos.size());
    bag.resize(nnz);
    for (int64_t k = 0; k < nnz; ++k) bag[k] = r.bag_of[r.pos[k]];
    if (psw == nullptr && !mean) return;
    scale.resize(nnz);
    for (int64_t k = 0; k < nnz; ++k) {
      scalar_t sc = psw ? psw[r.pos[k]] : scalar_t(1);
      if (mean) sc /= static_cast<scalar_t>(offsets[bag[k] + 1] - offsets[bag[k]]);
      scale[k] = sc;
    }
  }

  // acc = sum over sorted positions k in [begin, end) of grad_out[bag[k]] * scale[k].
  void reduce(int64_t begin, int64_t end, scalar_t* acc) const {
    std::fill(acc, acc + dim, scalar_t(0));
    const int64_t nnz = static_cast<int64_t>(bag.size());
    for (int64_t k = begin; k < end; ++k) {
      // grad_out rows are read in id order, i.e. at random: fetch a few ahead.
      if (k + kPrefetchGrads < nnz) {
        prefetch_row(grad_out + bag[k + kPrefetchGrads] * dim, dim, /*write=*/false);
      }
      const scalar_t* g = grad_out + bag[k] * dim;
      if (scale.empty()) {
        for (int64_t d = 0; d < dim; ++d) acc[d] += g[d];
      } else {
        const scalar_t sc = scale[k];
        for (int64_t d = 0; d < dim; ++d) acc[d] += sc * g[d];
      }
    }
  }
};

// Runs `opt.apply(row, grad_of_row, scratch)` once per unique row, in parallel over rows.
template <typename scalar_t, typename Opt>
void for_each_unique_row(const RowSegments& r, const SortedGrad<scalar_t>& grad, const Opt& opt) {
  const int64_t dim = grad.dim;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(dim, 1));
  at::parallel_for(0, r.size(), grain, [&](int64_t begin, int64_t end) {
    // acc: the row's gradient (the optimizer may overwrite it); tmp: its scratch.
    std::vector<scalar_t> acc(dim), tmp(dim);
    for (int64_t u = begin; u < end; ++u) {
      if (u + kPrefetchRows < end) opt.prefetch(r.unique_ids[u + kPrefetchRows]);
      grad.reduce(r.seg[u], r.seg[u + 1], acc.data());
      opt.apply(r.unique_ids[u], acc.data(), tmp.data());
    }
  });
}

// --- optimizer math on one row (g: the row's reduced gradient, dim values) ---

template <typename scalar_t>
struct SgdRow {
  scalar_t* weight;
  int64_t dim;
  scalar_t lr, weight_decay;
  void prefetch(int64_t row) const { prefetch_row(weight + row * dim, dim); }
  void apply(int64_t row, scalar_t* g, scalar_t* /*tmp*/) const {
    scalar_t* w = weight + row * dim;
    for (int64_t d = 0; d < dim; ++d) w[d] -= lr * (g[d] + weight_decay * w[d]);
  }
};

template <typename scalar_t>
struct AdagradRow {
  scalar_t* weight;
  scalar_t* sum;  // [rows, dim]
  int64_t dim;
  scalar_t lr, eps, weight_decay;
  void prefetch(int64_t row) const {
    prefetch_row(weight + row * dim, dim);
    prefetch_row(sum + row * dim, dim);
  }
  void apply(int64_t row, scalar_t* g, scalar_t* root) const {
    scalar_t* w = weight + row * dim;
    scalar_t* s = sum + row * dim;
    for (int64_t d = 0; d < dim; ++d) {
      g[d] += weight_decay * w[d];
      s[d] += g[d] * g[d];
      root[d] = s[d];
    }
    sqrt_array(root, dim);
    for (int64_t d = 0; d < dim; ++d) w[d] -= lr * g[d] / (root[d] + eps);
  }
};

// FBGEMM's EXACT_ROWWISE_ADAGRAD: one accumulator per row, s += mean(g^2).
template <typename scalar_t>
struct RowWiseAdagradRow {
  scalar_t* weight;
  scalar_t* sum;  // [rows]
  int64_t dim;
  scalar_t lr, eps, weight_decay;
  void prefetch(int64_t row) const {
    prefetch_row(weight + row * dim, dim);
    __builtin_prefetch(sum + row, 1);
  }
  void apply(int64_t row, scalar_t* g, scalar_t* /*tmp*/) const {
    scalar_t* w = weight + row * dim;
    // Sum of squares in kLanes independent partial sums: one running sum would be a
    // serial dependency chain the compiler may not reorder (no fast-math).
    constexpr int64_t kLanes = 8;
    scalar_t part[kLanes] = {};
    int64_t d = 0;
    for (; d + kLanes <= dim; d += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        g[d + l] += weight_decay * w[d + l];
        part[l] += g[d + l] * g[d + l];
      }
    }
    scalar_t sq = 0;
    for (; d < dim; ++d) {
      g[d] += weight_decay * w[d];
      sq += g[d] * g[d];
    }
    for (int64_t l = 0; l < kLanes; ++l) sq += part[l];
    sum[row] += sq / static_cast<scalar_t>(dim);
    const scalar_t step = lr / (std::sqrt(sum[row]) + eps);
    for (d = 0; d < dim; ++d) w[d] -= step * g[d];
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
  void prefetch(int64_t row) const {
    prefetch_row(weight + row * dim, dim);
    prefetch_row(exp_avg + row * dim, dim);
    prefetch_row(exp_avg_sq + row * dim, dim);
  }
  void apply(int64_t row, scalar_t* g, scalar_t* root) const {
    scalar_t* w = weight + row * dim;
    scalar_t* m = exp_avg + row * dim;
    scalar_t* v = exp_avg_sq + row * dim;
    const scalar_t l2 = decoupled ? scalar_t(0) : weight_decay;
    const scalar_t shrink = decoupled ? scalar_t(1) - lr * weight_decay : scalar_t(1);
    for (int64_t d = 0; d < dim; ++d) {
      const scalar_t gd = g[d] + l2 * w[d];
      m[d] += (scalar_t(1) - beta1) * (gd - m[d]);
      v[d] = beta2 * v[d] + (scalar_t(1) - beta2) * gd * gd;
      root[d] = v[d];
    }
    sqrt_array(root, dim);
    for (int64_t d = 0; d < dim; ++d) {
      w[d] = w[d] * shrink - step_size * m[d] / (root[d] * inv_bc2_sqrt + eps);
    }
  }
};

// --- ops ---

// Common front of every op: contiguous inputs, psw in the weight dtype, dedup.
struct Prepared {
  at::Tensor ids, offsets, psw, grad_out;
};

Prepared prepare(const at::Tensor& ids, const at::Tensor& offsets,
                 const std::optional<at::Tensor>& per_sample_weights, const at::Tensor& grad_out,
                 at::ScalarType dtype) {
  Prepared p{ids.contiguous(), offsets.contiguous(), at::Tensor(), grad_out.contiguous()};
  if (per_sample_weights.has_value()) p.psw = per_sample_weights->to(dtype).contiguous();
  return p;
}

// Dedups and calls make_opt.template operator()<scalar_t>() inside the dtype
// dispatch, then applies it to every unique row.
template <typename MakeOpt>
void run_update(const char* op, const at::Tensor& weight, const at::Tensor& ids,
                const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
                const at::Tensor& grad_out, bool mean, const MakeOpt& make_opt) {
  check_table(op, weight, grad_out);
  check_sparse_grad(op, ids, offsets, per_sample_weights, grad_out, weight.size(1));
  TORCH_CHECK(weight.device().is_cpu(), op, ": CPU kernel got a ", weight.device(), " weight");
  const Prepared p = prepare(ids, offsets, per_sample_weights, grad_out, weight.scalar_type());
  const int64_t num_bags = p.offsets.numel() - 1;
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "recis_sparse_update", [&] {
    AT_DISPATCH_INDEX_TYPES(p.ids.scalar_type(), "recis_sparse_update_index", [&] {
      const RowSegments r = dedup_rows<index_t>(op, p.ids.data_ptr<index_t>(), p.ids.numel(),
                                                p.offsets.data_ptr<index_t>(), num_bags,
                                                weight.size(0));
      if (r.size() == 0 || weight.size(1) == 0) return;
      const SortedGrad<scalar_t> grad(r, p.offsets.data_ptr<index_t>(),
                                      p.psw.defined() ? p.psw.data_ptr<scalar_t>() : nullptr,
                                      mean, p.grad_out.data_ptr<scalar_t>(), weight.size(1));
      for_each_unique_row(r, grad, make_opt.template operator()<scalar_t>());
    });
  });
}

std::tuple<at::Tensor, at::Tensor> unique_row_grads_cpu(
    const at::Tensor& ids, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights, const at::Tensor& grad_out, bool mean,
    int64_t num_rows) {
  constexpr const char* op = "recis.unique_row_grads";
  check_sparse_grad(op, ids, offsets, per_sample_weights, grad_out, grad_out.size(-1));
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat || grad_out.scalar_type() == at::kDouble, op,
              ": grad_out must be float32 or float64, got ", grad_out.scalar_type());
  TORCH_CHECK(num_rows >= 0, op, ": num_rows must be >= 0, got ", num_rows);
  const Prepared p = prepare(ids, offsets, per_sample_weights, grad_out, grad_out.scalar_type());
  const int64_t num_bags = p.offsets.numel() - 1, dim = p.grad_out.size(1);
  at::Tensor unique_ids, grads;
  AT_DISPATCH_FLOATING_TYPES(p.grad_out.scalar_type(), "recis_unique_row_grads", [&] {
    AT_DISPATCH_INDEX_TYPES(p.ids.scalar_type(), "recis_sparse_update_index", [&] {
      const RowSegments r = dedup_rows<index_t>(op, p.ids.data_ptr<index_t>(), p.ids.numel(),
                                                p.offsets.data_ptr<index_t>(), num_bags, num_rows);
      unique_ids = at::empty({r.size()}, p.ids.options().dtype(at::kLong));
      std::copy(r.unique_ids.begin(), r.unique_ids.end(), unique_ids.data_ptr<int64_t>());
      grads = at::empty({r.size(), dim}, p.grad_out.options());
      if (r.size() == 0 || dim == 0) return;
      const SortedGrad<scalar_t> grad(r, p.offsets.data_ptr<index_t>(),
                                      p.psw.defined() ? p.psw.data_ptr<scalar_t>() : nullptr,
                                      mean, p.grad_out.data_ptr<scalar_t>(), dim);
      scalar_t* out = grads.data_ptr<scalar_t>();
      const int64_t grain = std::max<int64_t>(1, 4096 / dim);
      at::parallel_for(0, r.size(), grain, [&](int64_t begin, int64_t end) {
        for (int64_t u = begin; u < end; ++u) grad.reduce(r.seg[u], r.seg[u + 1], out + u * dim);
      });
    });
  });
  return {unique_ids, grads};
}

void sparse_sgd_update_cpu(at::Tensor& weight, const at::Tensor& ids, const at::Tensor& offsets,
                           const std::optional<at::Tensor>& per_sample_weights,
                           const at::Tensor& grad_out, bool mean, double lr, double weight_decay) {
  constexpr const char* op = "recis.sparse_sgd_update";
  check_hyper(op, {{"lr", lr}, {"weight_decay", weight_decay}});
  run_update(op, weight, ids, offsets, per_sample_weights, grad_out, mean,
             [&]<typename scalar_t>() {
               return SgdRow<scalar_t>{weight.data_ptr<scalar_t>(), weight.size(1),
                                       static_cast<scalar_t>(lr),
                                       static_cast<scalar_t>(weight_decay)};
             });
}

void sparse_adagrad_update_cpu(at::Tensor& weight, at::Tensor& state_sum, const at::Tensor& ids,
                               const at::Tensor& offsets,
                               const std::optional<at::Tensor>& per_sample_weights,
                               const at::Tensor& grad_out, bool mean, double lr, double eps,
                               double weight_decay) {
  constexpr const char* op = "recis.sparse_adagrad_update";
  check_hyper(op, {{"lr", lr}, {"eps", eps}, {"weight_decay", weight_decay}});
  check_table(op, weight, grad_out);
  check_state(op, "state_sum", state_sum, weight, /*per_row=*/false);
  run_update(op, weight, ids, offsets, per_sample_weights, grad_out, mean,
             [&]<typename scalar_t>() {
               return AdagradRow<scalar_t>{weight.data_ptr<scalar_t>(),
                                           state_sum.data_ptr<scalar_t>(), weight.size(1),
                                           static_cast<scalar_t>(lr), static_cast<scalar_t>(eps),
                                           static_cast<scalar_t>(weight_decay)};
             });
}

void sparse_rowwise_adagrad_update_cpu(at::Tensor& weight, at::Tensor& state_sum,
                                       const at::Tensor& ids, const at::Tensor& offsets,
                                       const std::optional<at::Tensor>& per_sample_weights,
                                       const at::Tensor& grad_out, bool mean, double lr,
                                       double eps, double weight_decay) {
  constexpr const char* op = "recis.sparse_rowwise_adagrad_update";
  check_hyper(op, {{"lr", lr}, {"eps", eps}, {"weight_decay", weight_decay}});
  check_table(op, weight, grad_out);
  check_state(op, "state_sum", state_sum, weight, /*per_row=*/true);
  run_update(op, weight, ids, offsets, per_sample_weights, grad_out, mean,
             [&]<typename scalar_t>() {
               return RowWiseAdagradRow<scalar_t>{
                   weight.data_ptr<scalar_t>(), state_sum.data_ptr<scalar_t>(), weight.size(1),
                   static_cast<scalar_t>(lr), static_cast<scalar_t>(eps),
                   static_cast<scalar_t>(weight_decay)};
             });
}

void sparse_adam_update_cpu(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                            const at::Tensor& ids, const at::Tensor& offsets,
                            const std::optional<at::Tensor>& per_sample_weights,
                            const at::Tensor& grad_out, bool mean, double lr, double beta1,
                            double beta2, double eps, double weight_decay, int64_t step,
                            bool decoupled_weight_decay) {
  constexpr const char* op = "recis.sparse_adam_update";
  check_hyper(op, {{"lr", lr}, {"eps", eps}, {"weight_decay", weight_decay}});
  TORCH_CHECK(beta1 >= 0.0 && beta1 < 1.0 && beta2 >= 0.0 && beta2 < 1.0, op,
              ": betas must be in [0, 1), got (", beta1, ", ", beta2, ")");
  TORCH_CHECK(step >= 1, op, ": step must be >= 1 (the count after this update), got ", step);
  check_table(op, weight, grad_out);
  check_state(op, "exp_avg", exp_avg, weight, /*per_row=*/false);
  check_state(op, "exp_avg_sq", exp_avg_sq, weight, /*per_row=*/false);
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  run_update(op, weight, ids, offsets, per_sample_weights, grad_out, mean,
             [&]<typename scalar_t>() {
               return AdamRow<scalar_t>{weight.data_ptr<scalar_t>(),
                                        exp_avg.data_ptr<scalar_t>(),
                                        exp_avg_sq.data_ptr<scalar_t>(),
                                        weight.size(1),
                                        static_cast<scalar_t>(lr),
                                        static_cast<scalar_t>(beta1),
                                        static_cast<scalar_t>(beta2),
                                        static_cast<scalar_t>(eps),
                                        static_cast<scalar_t>(weight_decay),
                                        decoupled_weight_decay,
                                        static_cast<scalar_t>(lr / bc1),
                                        static_cast<scalar_t>(1.0 / std::sqrt(bc2))};
             });
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CPU, m) {
  m.impl("unique_row_grads", &unique_row_grads_cpu);
  m.impl("sparse_sgd_update", &sparse_sgd_update_cpu);
  m.impl("sparse_adagrad_update", &sparse_adagrad_update_cpu);
  m.impl("sparse_rowwise_adagrad_update", &sparse_rowwise_adagrad_update_cpu);
  m.impl("sparse_adam_update", &sparse_adam_update_cpu);
}

}  // namespace recis
