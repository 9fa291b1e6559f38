// ATen binding of the CUDA row bucketization (bucketize.cu): check and convert the
// tensors, launch on the current stream. Compiled only when torch has CUDA (setup.py).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cpu/bucketize_checks.h"
#include "cuda/kernels.h"

namespace recis {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(recis, CUDA, m) {
  m.impl("bucketize", &bucketize_cuda);
}

}  // namespace recis
