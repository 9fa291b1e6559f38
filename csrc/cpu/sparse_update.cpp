// CPU fused sparse-optimizer kernels and the per-unique-row gradient.
//
// Each update op takes a batch of tables. Every table is checked and its ids
// deduplicated first (row_dedup.h; several tables at once, one per thread: dedup_tables);
// then, table by table, one pass per unique row reduces its gradient straight from grad_out (nothing nnz x dim is ever materialised) and
// applies the optimizer (cpu/sparse_update_kernel.h, compiled for baseline x86-64,
// AVX2+FMA and AVX-512, chosen at run time: cpu/isa.h). SGD without weight decay skips the
// dedup when ids rarely repeat or all its rows fit in cache: it applies each
// occurrence on its own (sgd_by_occurrence, chosen by sgd_path).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <exception>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/cache_size.h"
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

// One table of an update: its inputs checked and made contiguous, the name its errors
// give (the op, and the table's index when the call has several).
struct Table {
  size_t index = 0;  // in the call's lists
  std::string op;
  at::Tensor weight;
  Prepared p;
  bool mean = false;
  int64_t state_bytes = 0;     // of its optimizer state
  bool by_occurrence = false;  // SGD applies each occurrence: no dedup (sgd_path)
  const RowSegments* segments = nullptr;  // its dedup (dedup_tables)
  int64_t nnz() const { return p.ids.numel(); }
  int64_t num_bags() const { return p.offsets.numel() - 1; }
};

// The tables of a call, checked: every list holds one entry per weight; each table's
// gradient fits it (state_bytes(op, t) checks table t's optimizer state, returning its
// bytes).
template <typename StateBytes>
std::vector<Table> check_tables(const char* op, at::TensorList weights, at::TensorList ids,
                                at::TensorList offsets,
                                const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                                at::TensorList grad_outs, const c10::List<bool>& mean,
                                const StateBytes& state_bytes) {
  const size_t n = weights.size();
  check_one_per_table(op, n,
                      {{"ids", ids.size()}, {"offsets", offsets.size()},
                       {"per_sample_weights", per_sample_weights.size()},
                       {"grad_outs", grad_outs.size()}, {"mean", mean.size()}});
  std::vector<Table> tables(n);
  for (size_t t = 0; t < n; ++t) {
    Table& table = tables[t];
    table.index = t;
    table.op = table_in_op(op, t, n);
    const char* top = table.op.c_str();
    const at::Tensor& weight = weights[t];
    check_table(top, weight, grad_outs[t]);
    table.state_bytes = state_bytes(top, t);
    const std::optional<at::Tensor> psw = per_sample_weights.get(t);
    check_sparse_grad(top, ids[t], offsets[t], psw, grad_outs[t], weight.size(1));
    TORCH_CHECK(weight.device().is_cpu(), top, ": CPU kernel got a ", weight.device(), " weight");
    table.weight = weight;
    table.p = prepare(ids[t], offsets[t], psw, grad_outs[t], weight.scalar_type());
    table.mean = mean.get(t);
  }
  return tables;
}

// Deduplicates every table's ids (range-checks those applied by occurrence), all before
// any table changes: a bad id in any table raises, naming the first such table, with
// every table intact. A table with more than a thread's share of all the ids is sorted
// on its own, split over the threads; the others one table per thread, the largest
// first. Split, one table sorts poorly at 2 threads: 8 tables of 164k Zipf ids over 1M
// rows took 4.6 ms split table by table against 2.95 ms one table per thread (5.8 ms
// at 1 thread; session 14, a scratch op).
void dedup_tables(std::vector<Table>& tables) {
  // The calling thread's results, one per table. A reference: named inside the lambda
  // below, a thread_local would be each worker thread's own (empty) vector.
  static thread_local std::vector<RowSegments> per_thread;
  std::vector<RowSegments>& workspaces = per_thread;
  if (workspaces.size() < tables.size()) workspaces.resize(tables.size());
  std::vector<std::exception_ptr> errors(tables.size());
  const auto dedup = [&](size_t t) {
    Table& table = tables[t];
    try {
      AT_DISPATCH_INDEX_TYPES(table.p.ids.scalar_type(), "recis_dedup_tables", [&] {
        const index_t* ids = table.p.ids.data_ptr<index_t>();
        const index_t* offsets = table.p.offsets.data_ptr<index_t>();
        const int64_t rows = table.weight.size(0);
        if (table.by_occurrence) {
          check_bags_and_ids(table.op.c_str(), ids, table.nnz(), offsets, table.num_bags(), rows);
        } else {
          static thread_local SortScratch scratch;  // the thread running this table's sort
          table.segments =
              &dedup_rows<index_t>(workspaces[t], scratch, table.op.c_str(), ids, table.nnz(),
                                   offsets, table.num_bags(), rows, table.p.occurrence());
        }
      });
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  int64_t total = 0;
  for (const Table& table : tables) total += table.nnz();
  std::vector<size_t> shared;  // one table per thread
  for (size_t t = 0; t < tables.size(); ++t) {
    if (threads == 1 || tables[t].nnz() * threads > total) {
      dedup(t);
    } else {
      shared.push_back(t);
    }
  }
  std::stable_sort(shared.begin(), shared.end(),
                   [&](size_t a, size_t b) { return tables[a].nnz() > tables[b].nnz(); });
  if (shared.size() == 1) {
    dedup(shared[0]);
  } else if (!shared.empty()) {
    std::atomic<size_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      for (size_t i; (i = next++) < shared.size();) dedup(shared[i]);
    });
  }
  for (const std::exception_ptr& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

// Deduplicates the checked tables (dedup_tables), then applies
// make_opt.template operator()<scalar_t, Kernels>(table) (built inside the ISA
// dispatch) to every unique row of each table in turn, over all threads. Tables marked
// by_occurrence (SGD) are updated by apply_by_occurrence(table) instead. Rows are also
// prefetched into L2 when the call's tables and state outgrow the cache
// (cpu/cache_size.h).
template <typename MakeOpt, typename ApplyByOccurrence = std::nullptr_t>
void update_tables(std::vector<Table>& tables, const MakeOpt& make_opt,
                   const ApplyByOccurrence& apply_by_occurrence = nullptr) {
  dedup_tables(tables);
  int64_t call_bytes = 0;
  for (const Table& table : tables) call_bytes += table.weight.nbytes() + table.state_bytes;
  const bool prefetch_to_l2 = call_bytes > l2_prefetch_threshold();
  for (const Table& table : tables) {
    if (table.nnz() == 0 || table.weight.size(1) == 0) continue;
    if constexpr (!std::is_same_v<ApplyByOccurrence, std::nullptr_t>) {
      if (table.by_occurrence) {
        apply_by_occurrence(table);
        continue;
      }
    }
    const RowSegments& r = *table.segments;
    AT_DISPATCH_FLOATING_TYPES(table.weight.scalar_type(), "recis_sparse_update", [&] {
      AT_DISPATCH_INDEX_TYPES(table.p.ids.scalar_type(), "recis_sparse_update_index", [&] {
        const SortedGrad<scalar_t> grad(
            r, table.p.offsets.data_ptr<index_t>(), table.num_bags(),
            table.p.psw.defined() ? table.p.psw.data_ptr<scalar_t>() : nullptr, table.mean,
            table.p.grad_out);
        with_kernels([&]<typename K>() {
          K::update(r, grad, make_opt.template operator()<scalar_t, K>(table), prefetch_to_l2);
        });
      });
    });
  }
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
      static thread_local RowSegments workspace;
      static thread_local SortScratch scratch;
      const RowSegments& r =
          dedup_rows<index_t>(workspace, scratch, op, p.ids.data_ptr<index_t>(), p.ids.numel(),
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

void sparse_sgd_update_cpu(at::TensorList weights, at::TensorList ids, at::TensorList offsets,
                           const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                           at::TensorList grad_outs, const c10::List<bool>& mean, double lr,
                           double weight_decay) {
  constexpr const char* op = "recis.sparse_sgd_update";
  check_hyper(op, {{"lr", lr}, {"weight_decay", weight_decay}});
  std::vector<Table> tables = check_tables(op, weights, ids, offsets, per_sample_weights,
                                           grad_outs, mean,
                                           [](const char*, size_t) { return int64_t{0}; });
  std::vector<SgdPath> paths(tables.size());
  for (Table& t : tables) {
    AT_DISPATCH_INDEX_TYPES(t.p.ids.scalar_type(), "recis_sgd_path", [&] {
      paths[t.index] = sgd_path(t.p.ids.data_ptr<index_t>(), t.nnz(), t.weight.size(0),
                                t.weight.size(1) * static_cast<int64_t>(t.weight.element_size()),
                                weight_decay);
    });
    t.by_occurrence = paths[t.index] != SgdPath::kDedup;
  }
  update_tables(
      tables,
      [&]<typename T, typename K>(const Table& t) {
        return typename K::template Sgd<T>{t.weight.data_ptr<T>(), t.weight.size(1),
                                           static_cast<T>(lr), static_cast<T>(weight_decay)};
      },
      [&](const Table& t) {
        AT_DISPATCH_FLOATING_TYPES(t.weight.scalar_type(), "recis_sgd_by_occurrence", [&] {
          AT_DISPATCH_INDEX_TYPES(t.p.ids.scalar_type(), "recis_sgd_by_occurrence_index", [&] {
            with_kernels([&]<typename K>() {
              K::sgd_without_decay(
                  t.weight.data_ptr<scalar_t>(), t.weight.size(0), t.weight.size(1),
                  t.p.ids.data_ptr<index_t>(), t.p.offsets.data_ptr<index_t>(), t.num_bags(),
                  t.p.psw.defined() ? t.p.psw.data_ptr<scalar_t>() : nullptr, t.mean,
                  t.p.grad_out.data_ptr<scalar_t>(), t.p.grad_out.stride(0),
                  static_cast<scalar_t>(lr), paths[t.index] == SgdPath::kByOccurrenceSplit);
            });
          });
        });
      });
}

// Adagrad (state_sum like the weight) and row-wise Adagrad (one value per row).
template <bool kPerRow>
void adagrad_like_cpu(const char* op, at::TensorList weights,
                      at::TensorList state_sums, at::TensorList ids, at::TensorList offsets,
                      const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                      at::TensorList grad_outs, const c10::List<bool>& mean, double lr, double eps,
                      double weight_decay) {
  check_hyper(op, {{"lr", lr}, {"eps", eps}, {"weight_decay", weight_decay}});
  check_one_per_table(op, weights.size(), {{"state_sums", state_sums.size()}});
  std::vector<Table> tables = check_tables(
      op, weights, ids, offsets, per_sample_weights, grad_outs, mean,
      [&](const char* top, size_t t) {
        check_state(top, "state_sum", state_sums[t], weights[t], kPerRow);
        return static_cast<int64_t>(state_sums[t].nbytes());
      });
  update_tables(tables, [&]<typename T, typename K>(const Table& t) {
    using Row = std::conditional_t<kPerRow, typename K::template RowWiseAdagrad<T>,
                                   typename K::template Adagrad<T>>;
    return Row{t.weight.data_ptr<T>(), state_sums[t.index].data_ptr<T>(), t.weight.size(1),
               static_cast<T>(lr), static_cast<T>(eps), static_cast<T>(weight_decay)};
  });
}

void sparse_adagrad_update_cpu(at::TensorList weights, at::TensorList state_sums,
                               at::TensorList ids, at::TensorList offsets,
                               const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                               at::TensorList grad_outs, const c10::List<bool>& mean, double lr,
                               double eps, double weight_decay) {
  adagrad_like_cpu<false>("recis.sparse_adagrad_update", weights, state_sums, ids, offsets,
                          per_sample_weights, grad_outs, mean, lr, eps, weight_decay);
}

void sparse_rowwise_adagrad_update_cpu(
    at::TensorList weights, at::TensorList state_sums, at::TensorList ids, at::TensorList offsets,
    const c10::List<std::optional<at::Tensor>>& per_sample_weights, at::TensorList grad_outs,
    const c10::List<bool>& mean, double lr, double eps, double weight_decay) {
  adagrad_like_cpu<true>("recis.sparse_rowwise_adagrad_update", weights, state_sums, ids,
                         offsets, per_sample_weights, grad_outs, mean, lr, eps, weight_decay);
}

void sparse_adam_update_cpu(at::TensorList weights, at::TensorList exp_avgs,
                            at::TensorList exp_avg_sqs, at::TensorList ids, at::TensorList offsets,
                            const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                            at::TensorList grad_outs, const c10::List<bool>& mean, double lr,
                            double beta1, double beta2, double eps, double weight_decay,
                            at::IntArrayRef steps, bool decoupled_weight_decay) {
  constexpr const char* op = "recis.sparse_adam_update";
  check_adam_call(op, lr, beta1, beta2, eps, weight_decay, weights.size(), exp_avgs.size(),
                  exp_avg_sqs.size(), steps.size());
  std::vector<Table> tables = check_tables(
      op, weights, ids, offsets, per_sample_weights, grad_outs, mean,
      [&](const char* top, size_t t) {
        check_adam_table(top, steps[t], exp_avgs[t], exp_avg_sqs[t], weights[t]);
        return static_cast<int64_t>(exp_avgs[t].nbytes() + exp_avg_sqs[t].nbytes());
      });
  update_tables(tables, [&]<typename T, typename K>(const Table& t) {
    const auto step = static_cast<double>(steps[t.index]);
    const double bc1 = 1.0 - std::pow(beta1, step), bc2 = 1.0 - std::pow(beta2, step);
    return typename K::template Adam<T>{t.weight.data_ptr<T>(),
                                        exp_avgs[t.index].data_ptr<T>(),
                                        exp_avg_sqs[t.index].data_ptr<T>(),
                                        t.weight.size(1),
                                        static_cast<T>(lr),
                                        static_cast<T>(beta1),
                                        static_cast<T>(beta2),
                                        static_cast<T>(eps),
                                        static_cast<T>(weight_decay),
                                        decoupled_weight_decay,
                                        static_cast<T>(lr / bc1),
                                        static_cast<T>(1.0 / std::sqrt(bc2))};
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
