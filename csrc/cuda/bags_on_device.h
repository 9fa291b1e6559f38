// The host side of a failed device check of int64 ids and offsets (cuda::flag_bad_bags,
// cuda::sparse_batch_keys), shared by the bindings: the search for the culprit.
#pragma once
#include <ATen/ATen.h>

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

}  // namespace recis
