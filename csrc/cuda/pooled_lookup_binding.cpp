// ATen bindings of the CUDA pooled lookups (pooled_lookup.cu): check and convert the
// tensors, launch on the current stream. Compiled only when torch has CUDA (setup.py).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cpu/common.h"
#include "cuda/bags_on_device.h"
#include "cuda/kernels.h"

namespace recis {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(recis, CUDA, m) {
  m.impl("pooled_lookup", &pooled_lookup_cuda);
  m.impl("pooled_lookup_into", &pooled_lookup_into_cuda);
  m.impl("pooled_lookup_tables", &pooled_lookup_tables_cuda);
}

}  // namespace recis
