#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace recis {

enum class Pooling : int64_t { kSum = 0, kMean = 1 };

inline Pooling to_pooling(int64_t pooling) {
  TORCH_CHECK(pooling == 0 || pooling == 1, "recis: pooling must be 0 (sum) or 1 (mean), got ",
              pooling);
  return static_cast<Pooling>(pooling);
}

// Shape and dtype checks shared by every bag-shaped kernel (CPU and CUDA bindings).
inline void check_bags(const at::Tensor& weight, const at::Tensor& ids, const at::Tensor& offsets,
                       const std::optional<at::Tensor>& per_sample_weights) {
  TORCH_CHECK(weight.dim() == 2, "recis: weight must be 2-D [rows, dim], got ", weight.sizes());
  TORCH_CHECK(ids.dim() == 1 && offsets.dim() == 1, "recis: ids and offsets must be 1-D");
  TORCH_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt,
              "recis: ids must be int32 or int64, got ", ids.scalar_type());
  TORCH_CHECK(offsets.scalar_type() == ids.scalar_type(),
              "recis: offsets must have the dtype of ids");
  TORCH_CHECK(offsets.numel() >= 1, "recis: offsets needs num_bags + 1 entries");
  // A kernel reads every pointer on its own device: a tensor elsewhere would be read
  // as garbage or crash it.
  TORCH_CHECK(ids.device() == weight.device() && offsets.device() == weight.device(),
              "recis: ids and offsets must be on the weight's device (", weight.device(),
              "), got ", ids.device(), " and ", offsets.device());
  if (per_sample_weights.has_value()) {
    TORCH_CHECK(per_sample_weights->dim() == 1 && per_sample_weights->numel() == ids.numel(),
                "recis: per_sample_weights must be 1-D with one weight per id");
    TORCH_CHECK(per_sample_weights->is_floating_point(),
                "recis: per_sample_weights must be floating point");
    TORCH_CHECK(per_sample_weights->device() == weight.device(),
                "recis: per_sample_weights must be on the weight's device (", weight.device(),
                "), got ", per_sample_weights->device());
  }
}

// The `out` of pooled_lookup_into: [num_bags, dim] of the weight's dtype and device,
// any row stride, contiguous columns (e.g. a column block of a collection's output).
inline void check_pooled_out(const at::Tensor& weight, const at::Tensor& offsets,
                             const at::Tensor& out) {
  constexpr const char* op = "recis.pooled_lookup";
  const int64_t num_bags = offsets.numel() - 1, dim = weight.size(1);
  TORCH_CHECK(out.dim() == 2 && out.size(0) == num_bags && out.size(1) == dim, op,
              ": out must be [num_bags, dim] = [", num_bags, ", ", dim, "], got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == weight.scalar_type() && out.device() == weight.device(), op,
              ": out must have the weight's dtype and device");
  TORCH_CHECK(dim <= 1 || out.stride(1) == 1, op, ": out needs contiguous columns, got strides ",
              out.strides());
}

// Raises naming the first id outside [0, rows). The min/max pass vectorises; the
// search for the culprit runs only when there is one.
template <typename index_t>
void check_ids_in_range(const char* op, const index_t* ids, int64_t n, int64_t rows) {
  if (n == 0) return;
  index_t lo = ids[0], hi = ids[0];
  for (int64_t j = 1; j < n; ++j) {
    lo = ids[j] < lo ? ids[j] : lo;
    hi = ids[j] > hi ? ids[j] : hi;
  }
  if (lo >= 0 && static_cast<int64_t>(hi) < rows) return;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t id = ids[j];
    TORCH_CHECK(id >= 0 && id < rows, op, ": id ", id, " at position ", j, " is outside [0, ",
                rows, ")");
  }
}

// Offsets are CSR: start 0, end nnz, non-decreasing, so every offset lies in [0, nnz].
template <typename index_t>
void check_offsets(const char* op, int64_t nnz, const index_t* offsets, int64_t num_bags) {
  TORCH_CHECK(offsets[0] == 0 && offsets[num_bags] == nnz, op,
              ": offsets must start at 0 and end at ids.numel() (", nnz, "), got ", offsets[0],
              " .. ", offsets[num_bags]);
  for (int64_t b = 0; b < num_bags; ++b) {
    TORCH_CHECK(offsets[b] <= offsets[b + 1], op, ": offsets decrease at bag ", b, " (",
                offsets[b], " > ", offsets[b + 1], ")");
  }
}

// Checks a bag-form batch before anything is written: its offsets, and every id in
// [0, rows). The hot kernels check ids inside their own pass over them instead (one
// compare per id) and call check_ids_in_range only to name a bad one.
template <typename index_t>
void check_bags_and_ids(const char* op, const index_t* ids, int64_t nnz, const index_t* offsets,
                        int64_t num_bags, int64_t rows) {
  check_offsets(op, nnz, offsets, num_bags);
  check_ids_in_range(op, ids, nnz, rows);
}

// id in [0, rows), with one unsigned compare.
template <typename index_t>
inline bool id_out_of_range(index_t id, int64_t rows) {
  return static_cast<uint64_t>(static_cast<int64_t>(id)) >= static_cast<uint64_t>(rows);
}

}  // namespace recis
