#pragma once
// Input checks of recis.bucketize shared by the CPU kernel and the CUDA binding, so
// that both name a bad input in the same words.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>

namespace recis {

// Shapes, dtypes and devices.
inline void check_bucketize(const at::Tensor& ids, const at::Tensor& lengths,
                            const std::optional<at::Tensor>& weights,
                            const at::Tensor& boundaries) {
  TORCH_CHECK(ids.dim() == 1 && lengths.dim() == 1 && boundaries.dim() == 1,
              "recis.bucketize: ids, lengths and boundaries must be 1-D");
  TORCH_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt,
              "recis.bucketize: ids must be int32 or int64, got ", ids.scalar_type());
  TORCH_CHECK(lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt,
              "recis.bucketize: lengths must be int32 or int64");
  TORCH_CHECK(boundaries.scalar_type() == at::kLong, "recis.bucketize: boundaries must be int64");
  TORCH_CHECK(boundaries.numel() >= 2, "recis.bucketize: boundaries needs num_buckets + 1 entries");
  TORCH_CHECK(lengths.device() == ids.device(), "recis.bucketize: lengths must be on the ids' ",
              "device (", ids.device(), "), got ", lengths.device());
  if (weights.has_value()) {
    TORCH_CHECK(weights->dim() == 1 && weights->numel() == ids.numel(),
                "recis.bucketize: weights must be 1-D with one weight per id");
    TORCH_CHECK(weights->is_floating_point(), "recis.bucketize: weights must be floating point");
    TORCH_CHECK(weights->device() == ids.device(), "recis.bucketize: weights must be on the ",
                "ids' device (", ids.device(), "), got ", weights->device());
  }
}

// Boundaries non-decreasing; lengths non-negative and summing to the n ids. Host data.
// bag_start (num_bags + 1 entries, when given) receives each bag's first position.
inline void check_bucketize_layout(const int64_t* lengths, int64_t num_bags,
                                   const int64_t* boundaries, int64_t num_buckets, int64_t n,
                                   int64_t* bag_start = nullptr) {
  for (int64_t k = 0; k < num_buckets; ++k) {
    TORCH_CHECK(boundaries[k] <= boundaries[k + 1],
                "recis.bucketize: boundaries must be non-decreasing");
  }
  int64_t sum = 0;
  for (int64_t b = 0; b < num_bags; ++b) {
    TORCH_CHECK(lengths[b] >= 0, "recis.bucketize: lengths[", b, "] is negative");
    if (bag_start != nullptr) bag_start[b] = sum;
    sum += lengths[b];
  }
  if (bag_start != nullptr) bag_start[num_bags] = sum;
  TORCH_CHECK(sum == n, "recis.bucketize: lengths sum to ", sum, " but there are ", n, " ids");
}

// The error for id v at position j outside [lo, hi): a ValueError in Python, as bad
// input data is everywhere in recis (the sharded input dist relays it to every rank).
[[noreturn]] inline void raise_id_outside_boundaries(int64_t v, int64_t j, int64_t lo,
                                                     int64_t hi) {
  TORCH_CHECK_VALUE(false, "recis.bucketize: id ", v, " at position ", j, " is outside [", lo,
                    ", ", hi, ")");
  __builtin_unreachable();
}

}  // namespace recis
