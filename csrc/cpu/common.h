#pragma once
#include <ATen/ATen.h>
#include <ATen/core/List.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace recis {

enum class Pooling : int64_t { kSum = 0, kMean = 1 };

inline Pooling to_pooling(const char* op, int64_t pooling) {
  TORCH_CHECK(pooling == 0 || pooling == 1, op, ": pooling must be 0 (sum) or 1 (mean), got ",
              pooling);
  return static_cast<Pooling>(pooling);
}

// Shape and dtype checks shared by every bag-shaped kernel (CPU and CUDA bindings);
// errors start with `op` (a batched op names the table there).
inline void check_bags(const at::Tensor& weight, const at::Tensor& ids, const at::Tensor& offsets,
                       const std::optional<at::Tensor>& per_sample_weights, const char* op) {
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D [rows, dim], got ", weight.sizes());
  TORCH_CHECK(ids.dim() == 1 && offsets.dim() == 1, op, ": ids and offsets must be 1-D");
  TORCH_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, op,
              ": ids must be int32 or int64, got ", ids.scalar_type());
  TORCH_CHECK(offsets.scalar_type() == ids.scalar_type(), op,
              ": offsets must have the dtype of ids");
  TORCH_CHECK(offsets.numel() >= 1, op, ": offsets needs num_bags + 1 entries");
  // A kernel reads every pointer on its own device: a tensor elsewhere would be read
  // as garbage or crash it.
  TORCH_CHECK(ids.device() == weight.device() && offsets.device() == weight.device(), op,
              ": ids and offsets must be on the weight's device (", weight.device(), "), got ",
              ids.device(), " and ", offsets.device());
  if (per_sample_weights.has_value()) {
    TORCH_CHECK(per_sample_weights->dim() == 1 && per_sample_weights->numel() == ids.numel(), op,
                ": per_sample_weights must be 1-D with one weight per id");
    TORCH_CHECK(per_sample_weights->is_floating_point(), op,
                ": per_sample_weights must be floating point");
    TORCH_CHECK(per_sample_weights->device() == weight.device(), op,
                ": per_sample_weights must be on the weight's device (", weight.device(),
                "), got ", per_sample_weights->device());
  }
}

// The lists of a batched op (one entry per table) all have one entry per weight.
inline void check_one_per_table(const char* op, size_t tables,
                                std::initializer_list<std::pair<const char*, size_t>> lists) {
  for (const auto& [name, size] : lists) {
    TORCH_CHECK(size == tables, op, ": one entry per table in every list: ", tables,
                " weights, ", size, " ", name);
  }
}

// How errors name table t of a batched op of n tables: the op, then the index.
inline std::string table_in_op(const char* op, size_t t, size_t n) {
  return n == 1 ? std::string(op) : std::string(op) + ", table " + std::to_string(t);
}

// pooled_lookup_tables' lists and shapes (the ids are the kernels' to check): returns
// the column of out at which each table's block starts.
inline std::vector<int64_t> check_lookup_tables(
    const char* op, at::TensorList weights, at::TensorList ids, at::TensorList offsets,
    const c10::List<std::optional<at::Tensor>>& per_sample_weights, const c10::List<bool>& mean,
    at::IntArrayRef features, const at::Tensor& out) {
  const size_t n = weights.size();
  check_one_per_table(op, n,
                      {{"ids", ids.size()}, {"offsets", offsets.size()},
                       {"per_sample_weights", per_sample_weights.size()}, {"mean", mean.size()},
                       {"features", features.size()}});
  TORCH_CHECK(out.dim() == 2, op, ": out must be 2-D [batch, width], got ", out.sizes());
  const int64_t batch = out.size(0);
  std::vector<int64_t> columns(n);
  int64_t width = 0;
  for (size_t t = 0; t < n; ++t) {
    const std::string top = table_in_op(op, t, n);
    const at::Tensor& weight = weights[t];
    check_bags(weight, ids[t], offsets[t], per_sample_weights.get(t), top.c_str());
    TORCH_CHECK(weight.is_floating_point(), top, ": weight must be floating point, got ",
                weight.scalar_type());
    TORCH_CHECK(weight.device() == out.device(), top, ": weight on ", weight.device(),
                ", out on ", out.device());
    TORCH_CHECK(features[t] >= 1, top, ": features must be >= 1, got ", features[t]);
    TORCH_CHECK(offsets[t].numel() == features[t] * batch + 1, top, ": offsets has ",
                offsets[t].numel(), " entries; ", features[t], " feature(s) of a batch of ",
                batch, " need ", features[t] * batch + 1);
    columns[t] = width;
    width += features[t] * weight.size(1);
  }
  TORCH_CHECK(out.size(1) == width, op, ": out must be [batch, ", width,
              "] (every table's features x dim side by side), got ", out.sizes());
  TORCH_CHECK(width <= 1 || out.stride(1) == 1, op, ": out needs contiguous columns, got strides ",
              out.strides());
  return columns;
}

// The `out` of pooled_lookup_into: [num_bags, dim] of the weight's dtype and device,
// any row stride, contiguous columns (e.g. a column block of a collection's output).
inline void check_pooled_out(const char* op, const at::Tensor& weight, const at::Tensor& offsets,
                             const at::Tensor& out) {
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
