// CPU fused sparse-optimizer kernels and the per-unique-row gradient.
//
// The ids are deduplicated first (row_dedup.h); then one pass per unique row reduces
// its gradient straight from grad_out (nothing nnz x dim is ever materialised) and
// applies the optimizer (cpu/sparse_update_kernel.h, compiled for baseline x86-64,
// AVX2+FMA and AVX-512, chosen at run time: cpu/isa.h). SGD without weight decay skips the
// dedup when ids rarely repeat or all its rows fit in cache: it applies each
// occurrence on its own (sgd_by_occurrence, chosen by sgd_path).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/isa.h"
#include "cpu/prefetch.h"
#include "cpu/row_dedup.h"
#include "cpu/sparse_update_checks.h"

namespace recis {
namespace {

// The bag-form gradient of one table in the order of the deduplicated ids: for
// each sorted occurrence k its bag and its multiplier (per-sample weight, ÷ bag
// length when mean), so that the per-row reduction streams them instead of chasing
// position -> bag through memory. Unweighted, the dedup's items are the bags.
//
// A strided grad_out (a table's column block of a collection's output) is read in
// place, unless its rows are read many times each (hot ids in many bags): then it is
// packed first. Rows a power-of-two stride apart fall into a few cache sets and evict
// each other; packed, they fill the cache. A/B at the kernels benchmark's shape (8192
// bags of ~20 Zipf ids): the update took 0.90-0.93x the time, the copy included.
template <typename scalar_t>
struct SortedGrad {
  const uint32_t* bags;    // [nnz], the bag in the bits of bag_mask
  uint32_t bag_mask;
  const scalar_t* scale;   // [nnz]; nullptr when every multiplier is 1
  const scalar_t* grad_out;  // row b at grad_out + b * row_stride
  int64_t dim, row_stride, nnz;

  int64_t bag(int64_t k) const { return bags[k] & bag_mask; }

  template <typename index_t>
  SortedGrad(const RowSegments& r, const index_t* offsets, int64_t num_bags, const scalar_t* psw,
             bool mean, const at::Tensor& grad_out_)
      : bags(r.items),
        bag_mask(r.item_mask),
        scale(nullptr),
        grad_out(grad_out_.data_ptr<scalar_t>()),
        dim(grad_out_.size(1)),
        row_stride(grad_out_.stride(0)),
        nnz(r.nnz) {
    TORCH_INTERNAL_ASSERT((psw != nullptr) == (r.item_is == Occurrence::kPosition));
    constexpr int64_t kReadsPerRowToPack = 8;
    if (row_stride != dim && nnz >= kReadsPerRowToPack * num_bags) {
      static thread_local Scratch<scalar_t> packed_buf;
      scalar_t* packed = packed_buf.resize(num_bags * dim);
      const scalar_t* src = grad_out;
      const int64_t stride = row_stride, n = dim;
      const int64_t grain = std::max<int64_t>(1, kDedupIdsPerPart / n);
      at::parallel_for(0, num_bags, grain, [=](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) std::copy_n(src + b * stride, n, packed + b * n);
      });
      grad_out = packed;
      row_stride = dim;
    }
    if (psw == nullptr && !mean) return;
    static thread_local Scratch<uint32_t> bag_of_buf, bag_buf;
    static thread_local Scratch<scalar_t> scale_buf;
    scalar_t* sc = scale_buf.resize(nnz);
    uint32_t* bag_of = nullptr;  // position -> bag, when the items are positions
    uint32_t* sorted_bag = nullptr;
    if (psw != nullptr) {
      // The items are positions; dedup_rows checked that bags fit 32 bits too.
      bag_of = bag_of_buf.resize(nnz);
      at::parallel_for(0, num_bags, kDedupIdsPerPart / 16, [=](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          std::fill(bag_of + offsets[b], bag_of + offsets[b + 1], static_cast<uint32_t>(b));
        }
      });
      sorted_bag = bag_buf.resize(nnz);
      bags = sorted_bag;
      bag_mask = ~uint32_t{0};
    }
    const uint32_t* items = r.items;
    const uint32_t item_mask = r.item_mask;
    at::parallel_for(0, nnz, kDedupIdsPerPart, [=](int64_t begin, int64_t end) {
      const uint32_t mask = item_mask;  // a local: a store below could alias a capture
      for (int64_t k = begin; k < end; ++k) {
        const int64_t item = items[k] & mask;
        int64_t b = item;
        scalar_t m = scalar_t(1);
        if (psw != nullptr) {
          b = sorted_bag[k] = bag_of[item];
          m = psw[item];
        }
        if (mean) m /= static_cast<scalar_t>(offsets[b + 1] - offsets[b]);
        sc[k] = m;
      }
    });
    scale = sc;
  }
};

// A row width known at compile time (Dim<64>) or only at run time (AnyDim). The
// kernels' loops take either; over the former they unroll, and a row's gradient
// stays in registers instead of a buffer.
template <int64_t kDim>
struct Dim {
  static constexpr int64_t value = kDim;
  constexpr operator int64_t() const { return kDim; }
};
struct AnyDim {
  int64_t value;
  operator int64_t() const { return value; }
};

// At a fixed width the remainder loops after the blocked ones are dead code, which
// GCC's loop analysis reports as out-of-bounds iterations of the row buffers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Waggressive-loop-optimizations"

#define RECIS_ISA_KERNEL "cpu/sparse_update_kernel.h"
#include "cpu/isa_kernels.inc"
#pragma GCC diagnostic pop

// Calls fn.template operator()<Kernels>() with the kernels of the ISA in use.
template <typename Fn>
void with_kernels(const Fn& fn) {
#if RECIS_HAVE_AVX2_KERNELS
  if (cpu_isa() >= Isa::kAvx512) return fn.template operator()<isa_avx512::Kernels>();
  if (cpu_isa() >= Isa::kAvx2) return fn.template operator()<isa_avx2::Kernels>();
#endif
  fn.template operator()<isa_base::Kernels>();
}

// --- ops ---

// Common front of every op: contiguous inputs, psw in the weight dtype, dedup.
struct Prepared {
  at::Tensor ids, offsets, psw, grad_out;
  // A per-sample weight is read by position; without one the bag is enough.
  Occurrence occurrence() const { return psw.defined() ? Occurrence::kPosition : Occurrence::kBag; }
};

Prepared prepare(const at::Tensor& ids, const at::Tensor& offsets,
                 const std::optional<at::Tensor>& per_sample_weights, const at::Tensor& grad_out,
                 at::ScalarType dtype) {
  // grad_out may be a column block of the whole batch's gradient: rows with any stride
  // are read in place.
  const bool rows_ok = grad_out.size(1) <= 1 || grad_out.stride(1) == 1;
  Prepared p{ids.contiguous(), offsets.contiguous(), at::Tensor(),
             rows_ok ? grad_out : grad_out.contiguous()};
  if (per_sample_weights.has_value()) p.psw = per_sample_weights->to(dtype).contiguous();
  return p;
}

// Checks the inputs, then calls body.template operator()<scalar_t, index_t>(p) inside
// the weight-dtype and index-type dispatch.
template <typename Body>
void dispatch_update(const char* op, const at::Tensor& weight, const at::Tensor& ids,
                     const at::Tensor& offsets,
                     const std::optional<at::Tensor>& per_sample_weights,
                     const at::Tensor& grad_out, const Body& body) {
  check_table(op, weight, grad_out);
  check_sparse_grad(op, ids, offsets, per_sample_weights, grad_out, weight.size(1));
  TORCH_CHECK(weight.device().is_cpu(), op, ": CPU kernel got a ", weight.device(), " weight");
  const Prepared p = prepare(ids, offsets, per_sample_weights, grad_out, weight.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "recis_sparse_update", [&] {
    AT_DISPATCH_INDEX_TYPES(p.ids.scalar_type(), "recis_sparse_update_index", [&] {
      body.template operator()<scalar_t, index_t>(p);
    });
  });
}

// Dedups p's ids and applies make_opt.template operator()<scalar_t, Kernels>() (built
// inside the ISA dispatch) to every unique row.
template <typename scalar_t, typename index_t, typename MakeOpt>
void update_unique_rows(const char* op, const at::Tensor& weight, const Prepared& p, bool mean,
                        const MakeOpt& make_opt) {
  const int64_t num_bags = p.offsets.numel() - 1;
  const RowSegments& r = dedup_rows<index_t>(op, p.ids.data_ptr<index_t>(), p.ids.numel(),
                                            p.offsets.data_ptr<index_t>(), num_bags,
                                            weight.size(0), p.occurrence());
  if (r.size() == 0 || weight.size(1) == 0) return;
  const SortedGrad<scalar_t> grad(r, p.offsets.data_ptr<index_t>(), num_bags,
                                  p.psw.defined() ? p.psw.data_ptr<scalar_t>() : nullptr, mean,
                                  p.grad_out);
  with_kernels([&]<typename K>() {
    K::update(r, grad, make_opt.template operator()<scalar_t, K>(),
              weight.numel() * weight.element_size());
  });
}

// Checks the inputs and runs update_unique_rows inside the dtype and index dispatch.
template <typename MakeOpt>
void run_update(const char* op, const at::Tensor& weight, const at::Tensor& ids,
                const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
                const at::Tensor& grad_out, bool mean, const MakeOpt& make_opt) {
  dispatch_update(op, weight, ids, offsets, per_sample_weights, grad_out,
                  [&]<typename scalar_t, typename index_t>(const Prepared& p) {
    update_unique_rows<scalar_t, index_t>(op, weight, p, mean, make_opt);
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
      const RowSegments& r =
          dedup_rows<index_t>(op, p.ids.data_ptr<index_t>(), p.ids.numel(),
                              p.offsets.data_ptr<index_t>(), num_bags, num_rows, p.occurrence());
      unique_ids = at::empty({r.size()}, p.ids.options().dtype(at::kLong));
      std::copy(r.unique_ids.data(), r.unique_ids.data() + r.size(),
                unique_ids.data_ptr<int64_t>());
      grads = at::empty({r.size(), dim}, p.grad_out.options());
      if (r.size() == 0 || dim == 0) return;
      const SortedGrad<scalar_t> grad(r, p.offsets.data_ptr<index_t>(), num_bags,
                                      p.psw.defined() ? p.psw.data_ptr<scalar_t>() : nullptr,
                                      mean, p.grad_out);
      with_kernels([&]<typename K>() { K::reduce_all(r, grad, grads.data_ptr<scalar_t>()); });
    });
  });
  return {unique_ids, grads};
}

// How SGD without decay applies the gradient. By occurrence skips the sort and reads
// the gradient in bag order. It wins when ids rarely repeat, and when every row the
// batch touches fits in cache together (min(nnz, rows) x row bytes <=
// kCachedOccurrenceBytes): repeats are then cache hits, and one thread does it all,
// since each thread's scan of every id would cost as much as the whole update.
// Otherwise many repeats (Zipf) make chains of updates to hot rows among missed ones,
// and the dedup path wins. It also wins on a table of at most kOneDigitRows rows hit
// by more occurrences than fit in cache (measured below; its sort is one radix pass).
// A/B, SGD step alone, 1 thread unless said:
// - uniform ids, 2048 bags of ~10 over 100k rows (~1% repeats sampled), AMD EPYC host
//   (session 7): by occurrence 0.63x the time of the dedup path;
// - Zipf ids, 8192 bags of ~20 over 1M rows (42 MB touched at dim 64): by occurrence
//   1.2x (dim 64) and 1.4x (dim 128) on the AMD host, 0.83x and 0.95x on session 8's
//   Intel host: the dedup path stays;
// - Zipf ids, 2048 bags of ~20 over 100k rows (Intel host, session 8): by occurrence
//   0.39x (dim 16) and 0.68x (dim 64), 0.49x with 8192 bags of dim 16; with 2 threads
//   and one owner 0.48x, 0.94x and 0.75x (split over both threads: 1.0x, 1.22x, 1.22x);
// - Zipf ids, 8192 bags of ~20 or ~80 (more than 16 MiB of occurrences) on tables of
//   4k-50k rows that fit in 16 MiB (`benchmarks/sgd_paths.py [--threads 2]`, Intel
//   host, session 9): by occurrence 0.39-0.73x (1 thread), 0.64-1.09x (2 threads); on
//   1k-2k rows (a scratch build that took the by-occurrence path there), 1.06-1.38x at
//   dims 32 and 64 (0.54-0.80x at 16 and 128).
enum class SgdPath { kDedup, kByOccurrence, kByOccurrenceSplit };
constexpr int64_t kCachedOccurrenceBytes = int64_t{16} << 20;
constexpr int64_t kOneDigitRows = int64_t{1} << kDedupDigitBits;

// Whether fewer than 1 in 8 of a sorted sample of up to 1024 evenly spaced ids repeat
// another.
template <typename index_t>
bool ids_mostly_distinct(const index_t* ids, int64_t nnz) {
  constexpr int64_t kSample = 1024;
  const int64_t n = std::min(nnz, kSample);
  std::array<int64_t, kSample> sample;
  for (int64_t i = 0; i < n; ++i) sample[i] = ids[i * nnz / n];
  std::sort(sample.begin(), sample.begin() + n);
  int64_t repeats = 0;
  for (int64_t i = 1; i < n; ++i) repeats += sample[i] == sample[i - 1];
  return repeats * 8 < n;
}

template <typename index_t>
SgdPath sgd_path(const index_t* ids, int64_t nnz, int64_t rows, int64_t row_bytes,
                 double weight_decay) {
  if (weight_decay != 0.0) return SgdPath::kDedup;
  if (nnz * row_bytes <= kCachedOccurrenceBytes) return SgdPath::kByOccurrence;
  if (rows > kOneDigitRows && rows * row_bytes <= kCachedOccurrenceBytes) {
    return SgdPath::kByOccurrence;
  }
  return ids_mostly_distinct(ids, nnz) ? SgdPath::kByOccurrenceSplit : SgdPath::kDedup;
}

void sparse_sgd_update_cpu(at::Tensor& weight, const at::Tensor& ids, const at::Tensor& offsets,
                           const std::optional<at::Tensor>& per_sample_weights,
                           const at::Tensor& grad_out, bool mean, double lr, double weight_decay) {
  constexpr const char* op = "recis.sparse_sgd_update";
  check_hyper(op, {{"lr", lr}, {"weight_decay", weight_decay}});
  dispatch_update(op, weight, ids, offsets, per_sample_weights, grad_out,
                  [&]<typename scalar_t, typename index_t>(const Prepared& p) {
    const int64_t nnz = p.ids.numel(), num_bags = p.offsets.numel() - 1;
    const index_t* i = p.ids.data_ptr<index_t>();
    const index_t* o = p.offsets.data_ptr<index_t>();
    const int64_t row_bytes = weight.size(1) * static_cast<int64_t>(sizeof(scalar_t));
    const SgdPath path = sgd_path(i, nnz, weight.size(0), row_bytes, weight_decay);
    if (path != SgdPath::kDedup) {
      check_bags_and_ids(op, i, nnz, o, num_bags, weight.size(0));
      if (nnz == 0 || weight.size(1) == 0) return;
      with_kernels([&]<typename K>() {
        K::sgd_without_decay(weight.data_ptr<scalar_t>(), weight.size(0), weight.size(1), i, o,
                             num_bags, p.psw.defined() ? p.psw.data_ptr<scalar_t>() : nullptr,
                             mean, p.grad_out.data_ptr<scalar_t>(), p.grad_out.stride(0),
                             static_cast<scalar_t>(lr), path == SgdPath::kByOccurrenceSplit);
      });
      return;
    }
    update_unique_rows<scalar_t, index_t>(op, weight, p, mean, [&]<typename T, typename K>() {
      return typename K::template Sgd<T>{weight.data_ptr<T>(), weight.size(1),
                                         static_cast<T>(lr), static_cast<T>(weight_decay)};
    });
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
             [&]<typename scalar_t, typename K>() {
               return typename K::template Adagrad<scalar_t>{weight.data_ptr<scalar_t>(),
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
             [&]<typename scalar_t, typename K>() {
               return typename K::template RowWiseAdagrad<scalar_t>{
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
             [&]<typename scalar_t, typename K>() {
               return typename K::template Adam<scalar_t>{weight.data_ptr<scalar_t>(),
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
