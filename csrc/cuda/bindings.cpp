// ATen bindings of the CUDA kernels: check and convert tensors, launch on the
// current stream. Compiled only when torch has CUDA (see setup.py).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu/bucketize_checks.h"
#include "cpu/common.h"
#include "cpu/sparse_update_checks.h"
#include "cuda/kernels.h"

namespace recis {
namespace {

// Raises naming the culprit of bad int64 ids or offsets on the device (a device-side
// check found them): a few small reductions and syncs, only on the way to an error.
[[noreturn]] void raise_bad_bags(const char* op, const at::Tensor& ids, const at::Tensor& offsets,
                                 int64_t rows) {
  const int64_t nnz = ids.numel();
  const auto first = offsets[0].item<int64_t>(), last = offsets[-1].item<int64_t>();
  TORCH_CHECK(first == 0 && last == nnz, op, ": offsets must start at 0 and end at ids.numel() (",
              nnz, "), got ", first, " .. ", last);
  TORCH_CHECK(offsets.numel() <= 1 || (offsets.diff() >= 0).all().item<bool>(), op,
              ": offsets decrease");
  const at::Tensor outside = ((ids < 0) | (ids >= rows)).nonzero();
  TORCH_CHECK(outside.numel() > 0, op, ": bad ids or offsets");
  const int64_t j = outside[0][0].item<int64_t>();
  TORCH_CHECK(false, op, ": id ", ids[j].item<int64_t>(), " at position ", j, " is outside [0, ",
              rows, ")");
}

// Checks int64 ids and offsets on their device as check_bags_and_ids does on the host
// (offsets CSR: start 0, end ids.numel(), non-decreasing; every id in [0, rows)): one
// launch and one sync when they are valid.
void check_bags_on_device(const char* op, const at::Tensor& ids, const at::Tensor& offsets,
                          int64_t rows) {
  auto bad = at::zeros({1}, ids.options().dtype(at::kInt));
  cuda::flag_bad_bags(ids.data_ptr<int64_t>(), ids.numel(), offsets.data_ptr<int64_t>(),
                      offsets.numel() - 1, rows, bad.data_ptr<int32_t>(),
                      at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (bad.item<int32_t>() != 0) raise_bad_bags(op, ids, offsets, rows);
}

// Pools into out [num_bags, dim] (checked by the caller), whose rows may be strided.
void pool_into(const at::Tensor& weight, const at::Tensor& ids, const at::Tensor& offsets,
               const std::optional<at::Tensor>& per_sample_weights, int64_t pooling,
               at::Tensor& out) {
  const Pooling mode = to_pooling(pooling);
  TORCH_CHECK(weight.scalar_type() == at::kFloat,
              "recis.pooled_lookup (CUDA): float32 weights only");
  const auto w = weight.contiguous();
  const auto ids64 = ids.to(at::kLong).contiguous();
  const auto offs64 = offsets.to(at::kLong).contiguous();
  check_bags_on_device("recis.pooled_lookup", ids64, offs64, w.size(0));
  at::Tensor psw;
  if (per_sample_weights.has_value()) psw = per_sample_weights->to(at::kFloat).contiguous();
  cuda::pooled_lookup_f32(w.data_ptr<float>(), w.size(0), w.size(1), ids64.data_ptr<int64_t>(),
                          offs64.data_ptr<int64_t>(),
                          psw.defined() ? psw.data_ptr<float>() : nullptr, offs64.numel() - 1,
                          mode == Pooling::kMean, out.data_ptr<float>(), out.stride(0),
                          at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor pooled_lookup_cuda(const at::Tensor& weight, const at::Tensor& ids,
                              const at::Tensor& offsets,
                              const std::optional<at::Tensor>& per_sample_weights,
                              int64_t pooling) {
  check_bags(weight, ids, offsets, per_sample_weights);
  const c10::cuda::CUDAGuard guard(weight.device());
  auto out = at::empty({offsets.numel() - 1, weight.size(1)}, weight.options());
  pool_into(weight, ids, offsets, per_sample_weights, pooling, out);
  return out;
}

// Straight into out's rows: a column block of a wider output needs no copy.
void pooled_lookup_into_cuda(const at::Tensor& weight, const at::Tensor& ids,
                             const at::Tensor& offsets,
                             const std::optional<at::Tensor>& per_sample_weights,
                             int64_t pooling, at::Tensor& out) {
  check_bags(weight, ids, offsets, per_sample_weights);
  check_pooled_out(weight, offsets, out);
  const c10::cuda::CUDAGuard guard(weight.device());
  pool_into(weight, ids, offsets, per_sample_weights, pooling, out);
}

// One launch per (table, feature) into its columns of out, after one id check of every
// table (one sync): the per-table lookups synced once each.
void pooled_lookup_tables_cuda(at::TensorList weights, at::TensorList ids, at::TensorList offsets,
                               const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                               const c10::List<bool>& mean, at::IntArrayRef features,
                               at::Tensor& out) {
  constexpr const char* op = "recis.pooled_lookup_tables";
  const std::vector<int64_t> columns =
      check_lookup_tables(op, weights, ids, offsets, per_sample_weights, mean, features, out);
  const size_t n = weights.size();
  if (n == 0) return;
  TORCH_CHECK(out.scalar_type() == at::kFloat, op, " (CUDA): float32 only, got out ",
              out.scalar_type());
  const c10::cuda::CUDAGuard guard(out.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  struct Table {
    at::Tensor weight, ids, offsets, psw;
  };
  std::vector<Table> tables;
  auto bad = at::zeros({static_cast<int64_t>(n)}, out.options().dtype(at::kInt));
  for (size_t t = 0; t < n; ++t) {
    TORCH_CHECK(weights[t].scalar_type() == at::kFloat, table_in_op(op, t, n),
                " (CUDA): float32 weights only, got ", weights[t].scalar_type());
    Table table{weights[t].contiguous(), ids[t].to(at::kLong).contiguous(),
                offsets[t].to(at::kLong).contiguous(), at::Tensor()};
    const std::optional<at::Tensor> psw = per_sample_weights.get(t);
    if (psw.has_value()) table.psw = psw->to(at::kFloat).contiguous();
    cuda::flag_bad_bags(table.ids.data_ptr<int64_t>(), table.ids.numel(),
                        table.offsets.data_ptr<int64_t>(), table.offsets.numel() - 1,
                        table.weight.size(0), bad.data_ptr<int32_t>() + t, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    tables.push_back(std::move(table));
  }
  const at::Tensor bad_host = bad.cpu();
  for (size_t t = 0; t < n; ++t) {
    if (bad_host.data_ptr<int32_t>()[t] == 0) continue;
    raise_bad_bags(table_in_op(op, t, n).c_str(), tables[t].ids, tables[t].offsets,
                   tables[t].weight.size(0));
  }
  const int64_t batch = out.size(0);
  for (size_t t = 0; t < n; ++t) {
    const Table& table = tables[t];
    const int64_t dim = table.weight.size(1);
    for (int64_t f = 0; f < features[t]; ++f) {
      // Feature f's bags: offsets from entry f * batch on; the ids they index are absolute.
      cuda::pooled_lookup_f32(table.weight.data_ptr<float>(), table.weight.size(0), dim,
                              table.ids.data_ptr<int64_t>(),
                              table.offsets.data_ptr<int64_t>() + f * batch,
                              table.psw.defined() ? table.psw.data_ptr<float>() : nullptr, batch,
                              mean.get(t), out.data_ptr<float>() + columns[t] + f * dim,
                              out.stride(0), stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
}

// Checks bucketize's values on their device: one sync when they are valid; the host
// checks (which name the culprit) run on a copy only when they are not.
void check_bucketize_on_device(const at::Tensor& ids, const at::Tensor& lengths,
                               const at::Tensor& boundaries) {
  const int64_t n = ids.numel(), num_bags = lengths.numel(), num_buckets = boundaries.numel() - 1;
  at::Tensor bad = (boundaries.diff() < 0).any() | (lengths.sum() != n);
  if (num_bags > 0) bad = bad | (lengths < 0).any();
  if (n > 0) {
    const auto [lo, hi] = at::aminmax(ids);
    bad = bad | (lo < boundaries[0]) | (hi >= boundaries[-1]);
  }
  if (!bad.item<bool>()) return;
  const auto len_h = lengths.cpu(), bnd_h = boundaries.cpu();
  const int64_t* bnd = bnd_h.data_ptr<int64_t>();
  check_bucketize_layout(len_h.data_ptr<int64_t>(), num_bags, bnd, num_buckets, n);
  const at::Tensor outside = (ids < boundaries[0]) | (ids >= boundaries[-1]);
  const int64_t j = outside.nonzero()[0][0].item<int64_t>();
  raise_id_outside_boundaries(ids[j].item<int64_t>(), j, bnd[0], bnd[num_buckets]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bucketize_cuda(
    const at::Tensor& ids, const at::Tensor& lengths, const std::optional<at::Tensor>& weights,
    const at::Tensor& boundaries) {
  check_bucketize(ids, lengths, weights, boundaries);
  TORCH_CHECK(ids.is_cuda(), "recis.bucketize: ids, lengths and weights must be on one device ",
              "(boundaries may be on the host), got ids on ", ids.device());
  const c10::cuda::CUDAGuard guard(ids.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto ids64 = ids.to(at::kLong).contiguous();
  const auto len64 = lengths.to(at::kLong).contiguous();
  const auto bnd = boundaries.to(ids.device()).contiguous();
  at::Tensor w;
  if (weights.has_value()) w = weights->to(at::kFloat).contiguous();
  check_bucketize_on_device(ids64, len64, bnd);
  const int64_t num_bags = len64.numel(), num_buckets = bnd.numel() - 1, n = ids64.numel();
  auto bag_start = at::zeros({num_bags + 1}, len64.options());
  if (num_bags) bag_start.narrow(0, 1, num_bags).copy_(at::cumsum(len64, 0));
  auto bucket = at::empty({n}, ids64.options().dtype(at::kInt));
  auto counts = at::zeros({num_buckets * num_bags}, len64.options());
  cuda::bucketize_count(ids64.data_ptr<int64_t>(), bag_start.data_ptr<int64_t>(), num_bags,
                        bnd.data_ptr<int64_t>(), num_buckets, bucket.data_ptr<int32_t>(),
                        counts.data_ptr<int64_t>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto slot_cursor = at::cumsum(counts, 0) - counts;
  auto out_ids = at::empty({n}, ids64.options());
  auto perm = at::empty({n}, ids64.options());
  auto out_w = w.defined() ? at::empty({n}, w.options())
                           : at::empty({0}, ids64.options().dtype(at::kFloat));
  cuda::bucketize_write(ids64.data_ptr<int64_t>(), w.defined() ? w.data_ptr<float>() : nullptr,
                        bag_start.data_ptr<int64_t>(), num_bags, bnd.data_ptr<int64_t>(),
                        bucket.data_ptr<int32_t>(), slot_cursor.data_ptr<int64_t>(),
                        out_ids.data_ptr<int64_t>(),
                        w.defined() ? out_w.data_ptr<float>() : nullptr,
                        perm.data_ptr<int64_t>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {counts.to(lengths.scalar_type()), out_ids.to(ids.scalar_type()), out_w, perm};
}

// --- sparse gradients and fused sparse-optimizer updates ---

// A table's bag-form gradient as the kernels read it: int64 ids and offsets, float32
// weights, grad_out with contiguous columns (a column block of the collection's
// output gradient is read in place). The kernels keep pointers into these.
struct CudaGrad {
  at::Tensor ids, offsets, psw, grad_out;
};

CudaGrad to_cuda_grad(const char* op, const at::Tensor& ids, const at::Tensor& offsets,
                      const std::optional<at::Tensor>& per_sample_weights,
                      const at::Tensor& grad_out) {
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat, op, " (CUDA): float32 only, got ",
              grad_out.scalar_type());
  const bool rows_readable = grad_out.size(1) <= 1 || grad_out.stride(1) == 1;
  CudaGrad g{ids.to(at::kLong).contiguous(), offsets.to(at::kLong).contiguous(), at::Tensor(),
             rows_readable ? grad_out : grad_out.contiguous()};
  if (per_sample_weights.has_value()) g.psw = per_sample_weights->to(at::kFloat).contiguous();
  return g;
}

// Table t's descriptor with its gradient filled in (its weight, state and optimizer
// step are the caller's to add).
cuda::SparseTable table_of(const CudaGrad& g, int64_t rows, bool mean) {
  cuda::SparseTable t{};
  t.rows = rows;
  t.dim = g.grad_out.size(1);
  t.ids = g.ids.data_ptr<int64_t>();
  t.offsets = g.offsets.data_ptr<int64_t>();
  t.psw = g.psw.defined() ? g.psw.data_ptr<float>() : nullptr;
  t.grad_out = g.grad_out.data_ptr<float>();
  t.grad_stride = g.grad_out.stride(0);
  t.nnz = g.ids.numel();
  t.num_bags = g.offsets.numel() - 1;
  t.mean = mean;
  return t;
}

// A batch on the device with its ids keyed and checked (sparse_batch_keys); the
// tensors hold what batch and the workspace point into until the launches are queued.
struct KeyedBatch {
  cuda::SparseBatch batch;
  at::Tensor tables, workspace;
};

// Places the tables in one batch, copies their descriptors to `device` and keys every
// id: one launch and one sync for the whole batch. A table whose ids or offsets are
// bad raises before anything changes, naming the culprit.
KeyedBatch key_batch(const char* op, std::vector<cuda::SparseTable>& tables,
                     const std::vector<CudaGrad>& grads, const std::vector<std::string>& names,
                     const at::Device& device) {
  int64_t nnz = 0, keys = 0, offsets = 0, max_dim = 0;
  for (cuda::SparseTable& t : tables) {
    t.first_key = keys;
    t.first_pos = nnz;
    t.first_offset = offsets;
    keys += t.rows;
    nnz += t.nnz;
    offsets += t.num_bags + 1;
    max_dim = std::max(max_dim, t.dim);
  }
  TORCH_CHECK(nnz < (int64_t{1} << 31), op, " (CUDA): at most 2^31 - 1 ids per call, got ", nnz);
  const auto bytes = static_cast<int64_t>(sizeof(cuda::SparseTable) * tables.size());
  // Pinned, so that the copy is queued without a sync (torch keeps the buffer until it is done).
  auto host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), tables.data(), static_cast<size_t>(bytes));
  const auto on_device = at::TensorOptions().dtype(at::kByte).device(device);
  KeyedBatch k;
  k.tables = at::empty({bytes}, on_device);
  k.tables.copy_(host, /*non_blocking=*/true);
  k.batch = {static_cast<const cuda::SparseTable*>(k.tables.data_ptr()),
             static_cast<int>(tables.size()), nnz, keys, offsets, max_dim};
  k.workspace = at::empty(
      {static_cast<int64_t>(cuda::sparse_update_workspace_bytes(nnz, max_dim))}, on_device);
  auto bad = at::zeros({static_cast<int64_t>(tables.size())}, on_device.dtype(at::kInt));
  cuda::sparse_batch_keys(k.batch, k.workspace.data_ptr(), bad.data_ptr<int32_t>(),
                          at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor bad_host = bad.cpu();
  for (size_t t = 0; t < tables.size(); ++t) {
    if (bad_host.data_ptr<int32_t>()[t] == 0) continue;
    raise_bad_bags(names[t].c_str(), grads[t].ids, grads[t].offsets, tables[t].rows);
  }
  return k;
}

using StatePtrs = std::pair<const at::Tensor*, const at::Tensor*>;

// A CUDA update over a batch of tables on one device: every table is checked on the
// host (check(t, op) adds the optimizer's checks of table t), then all their ids at
// once on the device, then all are updated in one pass on the current stream, table t
// with params(t) and its states(t) (nullptr where the optimizer has fewer).
template <typename Check, typename Params, typename States>
void run_update_cuda(const char* op, cuda::SparseOptim kind, at::TensorList weights,
                     at::TensorList ids, at::TensorList offsets,
                     const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                     at::TensorList grad_outs, const c10::List<bool>& mean, const Check& check,
                     const Params& params, const States& states) {
  const size_t n = weights.size();
  check_one_per_table(op, n,
                      {{"ids", ids.size()}, {"offsets", offsets.size()},
                       {"per_sample_weights", per_sample_weights.size()},
                       {"grad_outs", grad_outs.size()}, {"mean", mean.size()}});
  if (n == 0) return;
  std::vector<std::string> names(n);
  std::vector<CudaGrad> grads;
  std::vector<cuda::SparseTable> tables;
  for (size_t t = 0; t < n; ++t) {
    names[t] = table_in_op(op, t, n);
    const char* top = names[t].c_str();
    const at::Tensor& weight = weights[t];
    check_table(top, weight, grad_outs[t]);
    check(t, top);
    const std::optional<at::Tensor> psw = per_sample_weights.get(t);
    check_sparse_grad(top, ids[t], offsets[t], psw, grad_outs[t], weight.size(1));
    TORCH_CHECK(weight.device() == weights[0].device(), top, ": on ", weight.device(),
                ", table 0 on ", weights[0].device(), " (one call updates tables on one device)");
    TORCH_CHECK(weight.scalar_type() == at::kFloat, top, " (CUDA): float32 weights only");
    TORCH_CHECK(weight.size(1) <= cuda::max_sparse_update_dim(), top, " (CUDA): dim ",
                weight.size(1), " is above the supported ", cuda::max_sparse_update_dim());
    grads.push_back(to_cuda_grad(top, ids[t], offsets[t], psw, grad_outs[t]));
    cuda::SparseTable table = table_of(grads.back(), weight.size(0), mean.get(t));
    const auto [state0, state1] = StatePtrs(states(t));
    table.weight = weight.data_ptr<float>();
    table.state0 = state0 ? state0->data_ptr<float>() : nullptr;
    table.state1 = state1 ? state1->data_ptr<float>() : nullptr;
    table.params = params(t);
    tables.push_back(table);
  }
  const c10::cuda::CUDAGuard guard(weights[0].device());
  const KeyedBatch k = key_batch(op, tables, grads, names, weights[0].device());
  cuda::sparse_update_f32(kind, k.batch, k.workspace.data_ptr(), at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> unique_row_grads_cuda(
    const at::Tensor& ids, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights, const at::Tensor& grad_out, bool mean,
    int64_t num_rows) {
  constexpr const char* op = "recis.unique_row_grads";
  check_sparse_grad(op, ids, offsets, per_sample_weights, grad_out, grad_out.size(-1));
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const std::vector<CudaGrad> grads{to_cuda_grad(op, ids, offsets, per_sample_weights, grad_out)};
  std::vector<cuda::SparseTable> tables{table_of(grads[0], num_rows, mean)};
  const KeyedBatch k = key_batch(op, tables, grads, {op}, grad_out.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t num_unique = cuda::unique_rows(k.batch, k.workspace.data_ptr(), stream);
  auto unique_ids = at::empty({num_unique}, grads[0].ids.options());
  auto row_grads = at::empty({num_unique, grad_out.size(-1)}, grads[0].grad_out.options());
  cuda::unique_row_grads_f32(k.batch, k.workspace.data_ptr(), num_unique,
                             unique_ids.data_ptr<int64_t>(), row_grads.data_ptr<float>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {unique_ids, row_grads};
}

void sparse_sgd_update_cuda(at::TensorList weights, at::TensorList ids, at::TensorList offsets,
                            const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                            at::TensorList grad_outs, const c10::List<bool>& mean, double lr,
                            double weight_decay) {
  constexpr const char* op = "recis.sparse_sgd_update";
  check_hyper(op, {{"lr", lr}, {"weight_decay", weight_decay}});
  cuda::SparseOptimParams p;
  p.lr = static_cast<float>(lr);
  p.weight_decay = static_cast<float>(weight_decay);
  run_update_cuda(
      op, cuda::SparseOptim::kSgd, weights, ids, offsets, per_sample_weights, grad_outs, mean,
      [](size_t, const char*) {}, [&](size_t) { return p; },
      [](size_t) { return StatePtrs{nullptr, nullptr}; });
}

template <bool kPerRow>
void adagrad_like_cuda(const char* op, at::TensorList weights, at::TensorList state_sums,
                       at::TensorList ids, at::TensorList offsets,
                       const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                       at::TensorList grad_outs, const c10::List<bool>& mean, double lr,
                       double eps, double weight_decay) {
  check_hyper(op, {{"lr", lr}, {"eps", eps}, {"weight_decay", weight_decay}});
  check_one_per_table(op, weights.size(), {{"state_sums", state_sums.size()}});
  cuda::SparseOptimParams p;
  p.lr = static_cast<float>(lr);
  p.eps = static_cast<float>(eps);
  p.weight_decay = static_cast<float>(weight_decay);
  run_update_cuda(
      op, kPerRow ? cuda::SparseOptim::kRowWiseAdagrad : cuda::SparseOptim::kAdagrad, weights,
      ids, offsets, per_sample_weights, grad_outs, mean,
      [&](size_t t, const char* top) {
        check_state(top, "state_sum", state_sums[t], weights[t], kPerRow);
      },
      [&](size_t) { return p; }, [&](size_t t) { return StatePtrs{&state_sums[t], nullptr}; });
}

void sparse_adagrad_update_cuda(at::TensorList weights, at::TensorList state_sums,
                                at::TensorList ids, at::TensorList offsets,
                                const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                                at::TensorList grad_outs, const c10::List<bool>& mean, double lr,
                                double eps, double weight_decay) {
  adagrad_like_cuda<false>("recis.sparse_adagrad_update", weights, state_sums, ids, offsets,
                           per_sample_weights, grad_outs, mean, lr, eps, weight_decay);
}

void sparse_rowwise_adagrad_update_cuda(
    at::TensorList weights, at::TensorList state_sums, at::TensorList ids, at::TensorList offsets,
    const c10::List<std::optional<at::Tensor>>& per_sample_weights, at::TensorList grad_outs,
    const c10::List<bool>& mean, double lr, double eps, double weight_decay) {
  adagrad_like_cuda<true>("recis.sparse_rowwise_adagrad_update", weights, state_sums, ids,
                          offsets, per_sample_weights, grad_outs, mean, lr, eps, weight_decay);
}

void sparse_adam_update_cuda(at::TensorList weights, at::TensorList exp_avgs,
                             at::TensorList exp_avg_sqs, at::TensorList ids,
                             at::TensorList offsets,
                             const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                             at::TensorList grad_outs, const c10::List<bool>& mean, double lr,
                             double beta1, double beta2, double eps, double weight_decay,
                             at::IntArrayRef steps, bool decoupled_weight_decay) {
  constexpr const char* op = "recis.sparse_adam_update";
  check_adam_call(op, lr, beta1, beta2, eps, weight_decay, weights.size(), exp_avgs.size(),
                  exp_avg_sqs.size(), steps.size());
  cuda::SparseOptimParams p;
  p.lr = static_cast<float>(lr);
  p.beta1 = static_cast<float>(beta1);
  p.beta2 = static_cast<float>(beta2);
  p.eps = static_cast<float>(eps);
  p.weight_decay = static_cast<float>(weight_decay);
  p.decoupled = decoupled_weight_decay;
  run_update_cuda(
      op, cuda::SparseOptim::kAdam, weights, ids, offsets, per_sample_weights, grad_outs, mean,
      [&](size_t t, const char* top) {
        check_adam_table(top, steps[t], exp_avgs[t], exp_avg_sqs[t], weights[t]);
      },
      [&](size_t t) {
        const auto step = static_cast<double>(steps[t]);
        cuda::SparseOptimParams q = p;
        q.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, step)));
        q.inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(beta2, step)));
        return q;
      },
      [&](size_t t) { return StatePtrs{&exp_avgs[t], &exp_avg_sqs[t]}; });
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CUDA, m) {
  m.impl("pooled_lookup", &pooled_lookup_cuda);
  m.impl("pooled_lookup_into", &pooled_lookup_into_cuda);
  m.impl("pooled_lookup_tables", &pooled_lookup_tables_cuda);
  m.impl("bucketize", &bucketize_cuda);
  m.impl("unique_row_grads", &unique_row_grads_cuda);
  m.impl("sparse_sgd_update", &sparse_sgd_update_cuda);
  m.impl("sparse_adagrad_update", &sparse_adagrad_update_cuda);
  m.impl("sparse_rowwise_adagrad_update", &sparse_rowwise_adagrad_update_cuda);
  m.impl("sparse_adam_update", &sparse_adam_update_cuda);
}

}  // namespace recis
