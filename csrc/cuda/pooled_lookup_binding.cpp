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

// A table as the lookup kernel reads it (float32 weight and per-sample weights, int64
// ids and offsets), with its bags' place in out: `features` runs of out.size(0) bags,
// feature f's from column `column` + f * dim.
struct LookupTable {
  at::Tensor weight, ids, offsets, psw;
  bool mean;
  int64_t features, column;
};

LookupTable to_lookup_table(const std::string& op, const at::Tensor& weight, const at::Tensor& ids,
                            const at::Tensor& offsets,
                            const std::optional<at::Tensor>& per_sample_weights, bool mean,
                            int64_t features, int64_t column) {
  TORCH_CHECK(weight.scalar_type() == at::kFloat, op, " (CUDA): float32 weights only, got ",
              weight.scalar_type());
  LookupTable t{weight.contiguous(), ids.to(at::kLong).contiguous(),
                offsets.to(at::kLong).contiguous(), at::Tensor(), mean, features, column};
  if (per_sample_weights.has_value()) t.psw = per_sample_weights->to(at::kFloat).contiguous();
  return t;
}

// Checks every table's ids and offsets on the device, one launch each and one sync for
// all (a bad table raises, named by table_in_op), then pools each table's features into
// their columns of out (float32, checked by the caller), whose rows may be strided.
void pool_tables(const char* op, const std::vector<LookupTable>& tables, at::Tensor& out) {
  const size_t n = tables.size();
  if (n == 0) return;
  const auto stream = at::cuda::getCurrentCUDAStream();
  auto bad = at::zeros({static_cast<int64_t>(n)}, out.options().dtype(at::kInt));
  for (size_t t = 0; t < n; ++t) {
    const LookupTable& table = tables[t];
    cuda::flag_bad_bags(table.ids.data_ptr<int64_t>(), table.ids.numel(),
                        table.offsets.data_ptr<int64_t>(), table.offsets.numel() - 1,
                        table.weight.size(0), bad.data_ptr<int32_t>() + t, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor bad_host = bad.cpu();
  for (size_t t = 0; t < n; ++t) {
    if (bad_host.data_ptr<int32_t>()[t] == 0) continue;
    raise_bad_bags(table_in_op(op, t, n).c_str(), tables[t].ids, tables[t].offsets,
                   tables[t].weight.size(0));
  }
  const int64_t batch = out.size(0);
  for (const LookupTable& table : tables) {
    const int64_t dim = table.weight.size(1);
    for (int64_t f = 0; f < table.features; ++f) {
      // Feature f's bags: offsets from entry f * batch on; the ids they index are absolute.
      cuda::pooled_lookup_f32(table.weight.data_ptr<float>(), table.weight.size(0), dim,
                              table.ids.data_ptr<int64_t>(),
                              table.offsets.data_ptr<int64_t>() + f * batch,
                              table.psw.defined() ? table.psw.data_ptr<float>() : nullptr, batch,
                              table.mean, out.data_ptr<float>() + table.column + f * dim,
                              out.stride(0), stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
}

// Straight into out's rows: a column block of a wider output needs no copy.
void pooled_lookup_into_cuda(const at::Tensor& weight, const at::Tensor& ids,
                             const at::Tensor& offsets,
                             const std::optional<at::Tensor>& per_sample_weights,
                             int64_t pooling, at::Tensor& out) {
  constexpr const char* op = "recis.pooled_lookup";
  check_bags(weight, ids, offsets, per_sample_weights, op);
  check_pooled_out(op, weight, offsets, out);
  const bool mean = to_pooling(op, pooling) == Pooling::kMean;
  const c10::cuda::CUDAGuard guard(weight.device());
  pool_tables(op, {to_lookup_table(op, weight, ids, offsets, per_sample_weights, mean, 1, 0)},
              out);
}

at::Tensor pooled_lookup_cuda(const at::Tensor& weight, const at::Tensor& ids,
                              const at::Tensor& offsets,
                              const std::optional<at::Tensor>& per_sample_weights,
                              int64_t pooling) {
  check_bags(weight, ids, offsets, per_sample_weights, "recis.pooled_lookup");
  auto out = at::empty({offsets.numel() - 1, weight.size(1)}, weight.options());
  pooled_lookup_into_cuda(weight, ids, offsets, per_sample_weights, pooling, out);
  return out;
}

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
  std::vector<LookupTable> tables;
  for (size_t t = 0; t < n; ++t) {
    tables.push_back(to_lookup_table(table_in_op(op, t, n), weights[t], ids[t], offsets[t],
                                     per_sample_weights.get(t), mean.get(t), features[t],
                                     columns[t]));
  }
  pool_tables(op, tables, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CUDA, m) {
  m.impl("pooled_lookup", &pooled_lookup_cuda);
  m.impl("pooled_lookup_into", &pooled_lookup_into_cuda);
  m.impl("pooled_lookup_tables", &pooled_lookup_tables_cuda);
}

}  // namespace recis
