// ATen bindings of the CUDA kernels: check and convert tensors, launch on the
// current stream. Compiled only when torch has CUDA (see setup.py).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cpu/common.h"
#include "cuda/kernels.h"

namespace recis {
namespace {

at::Tensor pooled_lookup_cuda(const at::Tensor& weight, const at::Tensor& ids,
                              const at::Tensor& offsets,
                              const std::optional<at::Tensor>& per_sample_weights,
                              int64_t pooling) {
  check_bags(weight, ids, offsets, per_sample_weights);
  const Pooling mode = to_pooling(pooling);
  TORCH_CHECK(weight.scalar_type() == at::kFloat, "recis.pooled_lookup (CUDA): float32 weights only");
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto w = weight.contiguous();
  const auto ids64 = ids.to(at::kLong).contiguous();
  const auto offs64 = offsets.to(at::kLong).contiguous();
  at::Tensor psw;
  if (per_sample_weights.has_value()) psw = per_sample_weights->to(at::kFloat).contiguous();
  const int64_t num_bags = offs64.numel() - 1;
  auto out = at::empty({num_bags, w.size(1)}, w.options());
  cuda::pooled_lookup_f32(w.data_ptr<float>(), w.size(0), w.size(1), ids64.data_ptr<int64_t>(),
                          offs64.data_ptr<int64_t>(), psw.defined() ? psw.data_ptr<float>() : nullptr,
                          num_bags, mode == Pooling::kMean, out.data_ptr<float>(),
                          at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CUDA, m) { m.impl("pooled_lookup", &pooled_lookup_cuda); }

}  // namespace recis
