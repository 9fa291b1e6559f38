// Launchers of the CUDA kernels. Plain C++ types only, so that the .cu files need
// no torch headers; csrc/cuda/bindings.cpp adapts ATen tensors to these calls.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace recis::cuda {

// Blocks of per_block items each to cover `items`: at least 1, at most 65535 (the
// kernels stride over the grid for the rest).
inline int grid_for(int64_t items, int per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<int>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

// See the pooled_lookup schema in csrc/ops.cpp. Ids outside [0, rows) contribute
// nothing (the Python layer validates ids before the call).
void pooled_lookup_f32(const float* weight, int64_t rows, int64_t dim, const int64_t* ids,
                       const int64_t* offsets, const float* per_sample_weights, int64_t num_bags,
                       bool mean, float* out, cudaStream_t stream);

// Row bucketization (see the bucketize schema in csrc/ops.cpp), in two launches around
// an exclusive scan done by the binding. bag_start has num_bags + 1 entries; ids must lie
// in [boundaries[0], boundaries[num_buckets]) (the binding checks them first).
// counts ([num_buckets * num_bags], zeroed by the caller) gets ids per (bucket, bag).
void bucketize_count(const int64_t* ids, const int64_t* bag_start, int64_t num_bags,
                     const int64_t* boundaries, int64_t num_buckets, int32_t* bucket,
                     int64_t* counts, cudaStream_t stream);
// slot_cursor: exclusive scan of counts, consumed (each entry ends at the next one's
// start). weights / out_weights may be null.
void bucketize_write(const int64_t* ids, const float* weights, const int64_t* bag_start,
                     int64_t num_bags, const int64_t* boundaries, const int32_t* bucket,
                     int64_t* slot_cursor, int64_t* out_ids, float* out_weights,
                     int64_t* permutation, cudaStream_t stream);
// --- sparse gradients and fused sparse-optimizer updates (sparse_update.cu) ---
// A table's gradient in bag form (see the schemas in csrc/ops.cpp); ids in [0, rows)
// and CSR offsets are validated by the caller.
struct SparseGradView {
  const int64_t* ids;
  const int64_t* offsets;  // num_bags + 1
  const float* psw;        // nullptr: weights 1
  const float* grad_out;   // [num_bags, dim]
  int64_t nnz;
  int64_t num_bags;
  int64_t dim;
  bool mean;
};

enum class SparseOptim { kSgd, kAdagrad, kRowWiseAdagrad, kAdam };

struct SparseOptimParams {
  float lr = 0, eps = 0, weight_decay = 0, beta1 = 0, beta2 = 0;
  float step_size = 0, inv_bc2_sqrt = 1;  // Adam: lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t)
  bool decoupled = false;                 // AdamW
};

// Device workspace (bytes) that the calls below need for nnz ids of rows of dim
// floats; the caller allocates it on the stream's device.
size_t sparse_update_workspace_bytes(int64_t nnz, int64_t dim);
// Largest embedding dim the update kernels take (the row gradient lives in shared memory).
int64_t max_sparse_update_dim();

// Fused update of every touched row of weight [rows, dim] and its state:
// state0 = Adagrad/RowWiseAdagrad state_sum or Adam exp_avg; state1 = Adam exp_avg_sq.
// Asynchronous on `stream`.
void sparse_update_f32(SparseOptim kind, const SparseOptimParams& params, float* weight,
                       int64_t rows, float* state0, float* state1, const SparseGradView& grad,
                       void* workspace, cudaStream_t stream);

// unique_row_grads in two calls: unique_rows dedups into workspace and returns the
// number of unique rows (synchronises the stream); unique_row_grads_f32 then writes
// unique_ids [U] (ascending) and grads [U, dim] from the same workspace.
int64_t unique_rows(const SparseGradView& grad, int64_t rows, void* workspace,
                    cudaStream_t stream);
void unique_row_grads_f32(const SparseGradView& grad, void* workspace, int64_t num_unique,
                          int64_t* unique_ids, float* grads, cudaStream_t stream);

}  // namespace recis::cuda
