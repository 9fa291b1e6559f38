// ATen bindings of the CUDA sparse gradients and fused sparse-optimizer updates
// (sparse_update.cu): check and convert the tensors, launch on the current stream.
// Compiled only when torch has CUDA (setup.py).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu/common.h"
#include "cpu/sparse_update_checks.h"
#include "cuda/bags_on_device.h"
#include "cuda/kernels.h"

namespace recis {
namespace {

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
  m.impl("unique_row_grads", &unique_row_grads_cuda);
  m.impl("sparse_sgd_update", &sparse_sgd_update_cuda);
  m.impl("sparse_adagrad_update", &sparse_adagrad_update_cuda);
  m.impl("sparse_rowwise_adagrad_update", &sparse_rowwise_adagrad_update_cuda);
  m.impl("sparse_adam_update", &sparse_adam_update_cuda);
}

}  // namespace recis
