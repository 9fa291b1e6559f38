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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bucketize_cuda(
    const at::Tensor& ids, const at::Tensor& lengths, const std::optional<at::Tensor>& weights,
    const at::Tensor& boundaries) {
  TORCH_CHECK(ids.dim() == 1 && lengths.dim() == 1 && boundaries.dim() == 1,
              "recis.bucketize: ids, lengths and boundaries must be 1-D");
  TORCH_CHECK(boundaries.numel() >= 2, "recis.bucketize: boundaries needs num_buckets + 1 entries");
  const c10::cuda::CUDAGuard guard(ids.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto ids64 = ids.to(at::kLong).contiguous();
  const auto len64 = lengths.to(at::kLong).contiguous();
  const auto bnd = boundaries.to(ids.device(), at::kLong).contiguous();
  at::Tensor w;
  if (weights.has_value()) {
    TORCH_CHECK(weights->numel() == ids.numel(), "recis.bucketize: one weight per id");
    w = weights->to(at::kFloat).contiguous();
  }
  const int64_t num_bags = len64.numel(), num_buckets = bnd.numel() - 1, n = ids64.numel();
  auto bag_start = at::zeros({num_bags + 1}, len64.options());
  if (num_bags) bag_start.narrow(0, 1, num_bags).copy_(at::cumsum(len64, 0));
  auto bucket = at::empty({n}, ids64.options().dtype(at::kInt));
  auto counts = at::zeros({num_buckets * num_bags}, len64.options());
  cuda::bucketize_count(ids64.data_ptr<int64_t>(), bag_start.data_ptr<int64_t>(), num_bags,
                        bnd.data_ptr<int64_t>(), num_buckets, bucket.data_ptr<int32_t>(),
                        counts.data_ptr<int64_t>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto slot_start = at::cumsum(counts, 0) - counts;
  auto out_ids = at::empty({n}, ids64.options());
  auto perm = at::empty({n}, ids64.options());
  auto out_w = w.defined() ? at::empty({n}, w.options()) : at::empty({0}, ids64.options().dtype(at::kFloat));
  cuda::bucketize_write(ids64.data_ptr<int64_t>(), w.defined() ? w.data_ptr<float>() : nullptr,
                        bag_start.data_ptr<int64_t>(), num_bags, bnd.data_ptr<int64_t>(),
                        bucket.data_ptr<int32_t>(), slot_start.data_ptr<int64_t>(),
                        out_ids.data_ptr<int64_t>(), w.defined() ? out_w.data_ptr<float>() : nullptr,
                        perm.data_ptr<int64_t>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {counts.to(lengths.scalar_type()), out_ids.to(ids.scalar_type()), out_w, perm};
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CUDA, m) {
  m.impl("pooled_lookup", &pooled_lookup_cuda);
  m.impl("bucketize", &bucketize_cuda);
}

}  // namespace recis
