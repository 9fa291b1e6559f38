// ATen bindings of the CUDA kernels: check and convert tensors, launch on the
// current stream. Compiled only when torch has CUDA (see setup.py).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
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

// Checks int64 ids and offsets on their device as check_bags_and_ids does on the host:
// offsets CSR (start 0, end ids.numel(), non-decreasing), every id in [0, rows). One
// sync when they are valid; the culprit is looked for only when they are not.
void check_bags_on_device(const char* op, const at::Tensor& ids, const at::Tensor& offsets,
                          int64_t rows) {
  const int64_t nnz = ids.numel();
  at::Tensor bad = (offsets[0] != 0) | (offsets[-1] != nnz);
  if (offsets.numel() > 1) bad = bad | (offsets.diff() < 0).any();
  if (nnz > 0) {
    const auto [lo, hi] = at::aminmax(ids);
    bad = bad | (lo < 0) | (hi >= rows);
  }
  if (!bad.item<bool>()) return;
  const auto first = offsets[0].item<int64_t>(), last = offsets[-1].item<int64_t>();
  TORCH_CHECK(first == 0 && last == nnz, op, ": offsets must start at 0 and end at ids.numel() (",
              nnz, "), got ", first, " .. ", last);
  TORCH_CHECK(offsets.numel() <= 1 || (offsets.diff() >= 0).all().item<bool>(), op,
              ": offsets decrease");
  const int64_t j = ((ids < 0) | (ids >= rows)).nonzero()[0][0].item<int64_t>();
  TORCH_CHECK(false, op, ": id ", ids[j].item<int64_t>(), " at position ", j, " is outside [0, ",
              rows, ")");
}

at::Tensor pooled_lookup_cuda(const at::Tensor& weight, const at::Tensor& ids,
                              const at::Tensor& offsets,
                              const std::optional<at::Tensor>& per_sample_weights,
                              int64_t pooling) {
  check_bags(weight, ids, offsets, per_sample_weights);
  const Pooling mode = to_pooling(pooling);
  TORCH_CHECK(weight.scalar_type() == at::kFloat,
              "recis.pooled_lookup (CUDA): float32 weights only");
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto w = weight.contiguous();
  const auto ids64 = ids.to(at::kLong).contiguous();
  const auto offs64 = offsets.to(at::kLong).contiguous();
  check_bags_on_device("recis.pooled_lookup", ids64, offs64, w.size(0));
  at::Tensor psw;
  if (per_sample_weights.has_value()) psw = per_sample_weights->to(at::kFloat).contiguous();
  const int64_t num_bags = offs64.numel() - 1;
  auto out = at::empty({num_bags, w.size(1)}, w.options());
  cuda::pooled_lookup_f32(w.data_ptr<float>(), w.size(0), w.size(1), ids64.data_ptr<int64_t>(),
                          offs64.data_ptr<int64_t>(),
                          psw.defined() ? psw.data_ptr<float>() : nullptr,
                          num_bags, mode == Pooling::kMean, out.data_ptr<float>(),
                          at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// The CUDA kernel writes contiguous rows: pool, then copy into the (strided) block.
void pooled_lookup_into_cuda(const at::Tensor& weight, const at::Tensor& ids,
                             const at::Tensor& offsets,
                             const std::optional<at::Tensor>& per_sample_weights,
                             int64_t pooling, at::Tensor& out) {
  const at::Tensor pooled = pooled_lookup_cuda(weight, ids, offsets, per_sample_weights, pooling);
  check_pooled_out(weight, offsets, out);
  out.copy_(pooled);
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

// The bag-form gradient as int64 ids/offsets and float32 weights, validated on the
// device (one sync; the update must not start on bad ids or offsets).
struct CudaGrad {
  at::Tensor ids, offsets, psw, grad_out;
  cuda::SparseGradView view() const {
    return {ids.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
            psw.defined() ? psw.data_ptr<float>() : nullptr, grad_out.data_ptr<float>(),
            ids.numel(), offsets.numel() - 1, grad_out.size(1), false};
  }
};

CudaGrad prepare_grad(const char* op, const at::Tensor& ids, const at::Tensor& offsets,
                      const std::optional<at::Tensor>& per_sample_weights,
                      const at::Tensor& grad_out, int64_t rows) {
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat, op, " (CUDA): float32 only, got ",
              grad_out.scalar_type());
  CudaGrad g{ids.to(at::kLong).contiguous(), offsets.to(at::kLong).contiguous(), at::Tensor(),
             grad_out.contiguous()};
  if (per_sample_weights.has_value()) g.psw = per_sample_weights->to(at::kFloat).contiguous();
  const int64_t nnz = g.ids.numel();
  TORCH_CHECK(nnz < (int64_t{1} << 31), op, " (CUDA): at most 2^31 - 1 ids per call, got ", nnz);
  check_bags_on_device(op, g.ids, g.offsets, rows);
  return g;
}

at::Tensor workspace_for(const at::Tensor& like, int64_t nnz, int64_t dim) {
  return at::empty({static_cast<int64_t>(cuda::sparse_update_workspace_bytes(nnz, dim))},
                   like.options().dtype(at::kByte));
}

// A table's optimizer state tensors (nullptr where the optimizer has fewer).
using StatePtrs = std::pair<const at::Tensor*, const at::Tensor*>;

// A CUDA update over a batch of tables: every table is checked first (check(t, op)
// adds the optimizer's checks of table t; its ids on the device, one sync each), then
// each is updated on the current stream with params(t) and its states(t).
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
  std::vector<std::string> names(n);
  std::vector<CudaGrad> grads;
  for (size_t t = 0; t < n; ++t) {
    names[t] = table_in_op(op, t, n);
    const char* top = names[t].c_str();
    const at::Tensor& weight = weights[t];
    check_table(top, weight, grad_outs[t]);
    check(t, top);
    const std::optional<at::Tensor> psw = per_sample_weights.get(t);
    check_sparse_grad(top, ids[t], offsets[t], psw, grad_outs[t], weight.size(1));
    TORCH_CHECK(weight.scalar_type() == at::kFloat, top, " (CUDA): float32 weights only");
    TORCH_CHECK(weight.size(1) <= cuda::max_sparse_update_dim(), top, " (CUDA): dim ",
                weight.size(1), " is above the supported ", cuda::max_sparse_update_dim());
    const c10::cuda::CUDAGuard guard(weight.device());
    grads.push_back(prepare_grad(top, ids[t], offsets[t], psw, grad_outs[t], weight.size(0)));
  }
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor& weight = weights[t];
    const c10::cuda::CUDAGuard guard(weight.device());
    auto view = grads[t].view();
    view.mean = mean.get(t);
    const auto ws = workspace_for(weight, view.nnz, view.dim);
    const auto [state0, state1] = StatePtrs(states(t));
    cuda::sparse_update_f32(kind, params(t), weight.data_ptr<float>(), weight.size(0),
                            state0 ? state0->data_ptr<float>() : nullptr,
                            state1 ? state1->data_ptr<float>() : nullptr, view, ws.data_ptr(),
                            at::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor> unique_row_grads_cuda(
    const at::Tensor& ids, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights, const at::Tensor& grad_out, bool mean,
    int64_t num_rows) {
  constexpr const char* op = "recis.unique_row_grads";
  check_sparse_grad(op, ids, offsets, per_sample_weights, grad_out, grad_out.size(-1));
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const CudaGrad g = prepare_grad(op, ids, offsets, per_sample_weights, grad_out, num_rows);
  auto view = g.view();
  view.mean = mean;
  const auto ws = workspace_for(grad_out, view.nnz, view.dim);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t num_unique = cuda::unique_rows(view, num_rows, ws.data_ptr(), stream);
  auto unique_ids = at::empty({num_unique}, g.ids.options());
  auto grads = at::empty({num_unique, view.dim}, g.grad_out.options());
  cuda::unique_row_grads_f32(view, ws.data_ptr(), num_unique, unique_ids.data_ptr<int64_t>(),
                             grads.data_ptr<float>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {unique_ids, grads};
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
  m.impl("bucketize", &bucketize_cuda);
  m.impl("unique_row_grads", &unique_row_grads_cuda);
  m.impl("sparse_sgd_update", &sparse_sgd_update_cuda);
  m.impl("sparse_adagrad_update", &sparse_adagrad_update_cuda);
  m.impl("sparse_rowwise_adagrad_update", &sparse_rowwise_adagrad_update_cuda);
  m.impl("sparse_adam_update", &sparse_adam_update_cuda);
}

}  // namespace recis
