// Launchers of the CUDA kernels. Plain C++ types only, so that the .cu files need
// no torch headers; csrc/cuda/*_binding.cpp adapt ATen tensors to these calls.
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

// bad[0] = 1 (bad zeroed by the caller) when the CSR offsets (num_bags + 1 entries)
// do not start at 0, end at nnz and never decrease, or an id is outside [0, rows).
void flag_bad_bags(const int64_t* ids, int64_t nnz, const int64_t* offsets, int64_t num_bags,
                int64_t rows, int32_t* bad, cudaStream_t stream);

// See the pooled_lookup schema in csrc/ops.cpp; bag b's row is out + b * out_stride.
// Ids outside [0, rows) contribute nothing (the binding checks them first).
void pooled_lookup_f32(const float* weight, int64_t rows, int64_t dim, const int64_t* ids,
                       const int64_t* offsets, const float* per_sample_weights, int64_t num_bags,
                       bool mean, float* out, int64_t out_stride, cudaStream_t stream);

// Routing of a batch to the slots of a sharded collection (see the route schema in
// csrc/ops.cpp), in two launches around an exclusive scan done by the binding. One
// thread per bag (key f = bag / batch); the plan's arrays are on the device.
struct RoutePlan {
  const int64_t* key_table;    // [keys]
  const int64_t* key_feature;  // [keys]
  const int64_t* bounds;       // [tables, blocks + 1]
  const int64_t* slots;        // [tables, blocks, copies], -1 padded
  const int64_t* divide;       // [tables], 0 or 1
  const int64_t* bag_base;     // [slots + 1]: first count of each slot
  int64_t blocks, copies, batch;
};
// counts (zeroed by the caller) gets the values per (slot, feature, sample); block the
// row block of each value. A value outside its table's rows is left out and the lowest
// such position is written to bad[0] (set to n by the caller). bag_start has num_bags +
// 1 entries; bags outside [0, n) are clipped (the binding then raises on the lengths).
void route_count(const int64_t* values, int64_t n, const int64_t* bag_start, int64_t num_bags,
                 const RoutePlan& plan, int32_t* block, int64_t* counts,
                 unsigned long long* bad, cudaStream_t stream);
// cursor: exclusive scan of counts, consumed. Writes each bag's lengths (from counts)
// at send_ints[count index + bag_shift[slot]] and its values at send_ints[cursor +
// id_shift[slot]], weights (may be null: none sent; in_weights null: 1) and positions
// (may be null) at [cursor].
void route_write(const int64_t* values, const float* in_weights, const int64_t* lengths,
                 const int64_t* bag_start, int64_t num_bags, const RoutePlan& plan,
                 const int32_t* block, const int64_t* counts, int64_t* cursor,
                 const int64_t* id_shift, const int64_t* bag_shift, int64_t* send_ints,
                 float* send_weights, int64_t* positions, cudaStream_t stream);
// --- sparse gradients and fused sparse-optimizer updates (sparse_update.cu) ---
enum class SparseOptim { kSgd, kAdagrad, kRowWiseAdagrad, kAdam };

struct SparseOptimParams {
  float lr = 0, eps = 0, weight_decay = 0, beta1 = 0, beta2 = 0;
  float step_size = 0, inv_bc2_sqrt = 1;  // Adam: lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t)
  bool decoupled = false;                 // AdamW
};

// One table of a batch and its gradient in bag form (see the schemas in csrc/ops.cpp).
// A batch is deduplicated and updated as one: table t's row r is key first_key + r,
// and its ids are positions [first_pos, first_pos + nnz) of the batch.
struct SparseTable {
  float* weight;  // [rows, dim]; nullptr for unique_row_grads
  float* state0;  // Adagrad / row-wise Adagrad state_sum, Adam exp_avg; or nullptr
  float* state1;  // Adam exp_avg_sq; or nullptr
  int64_t rows, dim;
  const int64_t* ids;
  const int64_t* offsets;  // num_bags + 1
  const float* psw;        // nullptr: weights 1
  const float* grad_out;   // [num_bags, dim]: bag b's row at grad_out + b * grad_stride
  int64_t grad_stride;
  int64_t nnz, num_bags;
  bool mean;
  SparseOptimParams params;
  int64_t first_key, first_pos, first_offset;  // the sums over the tables before
};

// A batch: its tables (in device memory) and the sizes the host needs.
struct SparseBatch {
  const SparseTable* tables;
  int num_tables;
  int64_t nnz;         // ids of all tables (< 2^31)
  int64_t keys;        // rows of all tables
  int64_t offsets;     // offsets entries of all tables
  int64_t max_dim;
};

// Device workspace (bytes) for a batch of nnz ids, rows at most max_dim floats wide;
// the caller allocates it on the stream's device.
size_t sparse_update_workspace_bytes(int64_t nnz, int64_t max_dim);
// Largest embedding dim the update kernels take (row-wise Adagrad keeps a row wider than
// 128 floats in shared memory between its two passes).
int64_t max_sparse_update_dim();

// Keys the batch's ids into the workspace and checks them: bad[t] = 1 (bad zeroed by
// the caller) when table t's offsets are not CSR (start 0, end nnz, non-decreasing) or
// one of its ids is outside [0, rows). The calls below need this first, and no bad
// table: they index weights by these ids.
void sparse_batch_keys(const SparseBatch& batch, void* workspace, int32_t* bad,
                       cudaStream_t stream);

// Fused update of every touched row of every table of the batch and its state.
// Asynchronous on `stream`.
void sparse_update_f32(SparseOptim kind, const SparseBatch& batch, void* workspace,
                       cudaStream_t stream);

// unique_row_grads of a batch of one table, in two calls: unique_rows dedups into the
// workspace and returns the number of unique rows (synchronises the stream);
// unique_row_grads_f32 then writes unique_ids [U] (ascending) and grads [U, dim].
int64_t unique_rows(const SparseBatch& batch, void* workspace, cudaStream_t stream);
void unique_row_grads_f32(const SparseBatch& batch, void* workspace, int64_t num_unique,
                          int64_t* unique_ids, float* grads, cudaStream_t stream);

}  // namespace recis::cuda
