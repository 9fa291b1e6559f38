// Host-side checks of int64 ids and offsets that live on a CUDA device, shared by the
// bindings: a one-launch check, and the search for the culprit once it found one.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include "cuda/kernels.h"

namespace recis {

// Raises naming the culprit of bad int64 ids or offsets on the device (a device-side
// check found them): a few small reductions and syncs, only on the way to an error.
[[noreturn]] inline void raise_bad_bags(const char* op, const at::Tensor& ids,
                                        const at::Tensor& offsets, int64_t rows) {
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
inline void check_bags_on_device(const char* op, const at::Tensor& ids,
                                 const at::Tensor& offsets, int64_t rows) {
  auto bad = at::zeros({1}, ids.options().dtype(at::kInt));
  cuda::flag_bad_bags(ids.data_ptr<int64_t>(), ids.numel(), offsets.data_ptr<int64_t>(),
                      offsets.numel() - 1, rows, bad.data_ptr<int32_t>(),
                      at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (bad.item<int32_t>() != 0) raise_bad_bags(op, ids, offsets, rows);
}

}  // namespace recis
