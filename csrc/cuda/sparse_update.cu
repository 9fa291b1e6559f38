// CUDA per-unique-row gradients and fused sparse-optimizer updates (float32), over a
// batch of tables at once.
//
// Dedup: every table's ids become keys in one key space (table t's row r is
// first_key + r), checked as they are keyed; the (key, position) pairs of the whole
// batch are radix-sorted over only the bits the key count needs (cub), run-length
// encoded into unique keys + group sizes, and scanned into group starts. One sort, one
// check and one sync per batch, not per table: with a sync, a workspace and ten
// launches per table, the host bounded the update (H200, session 16). Everything after
// the check stays on the device: the update's grid strides up to the device-side
// unique count.
// Update: one warp per unique row; the warp reduces the row's gradient from
// grad_out[bag] * weight (÷ bag length when mean) in registers, 128 columns at a time -
// never an nnz x dim tensor - then applies its table's optimizer step to those
// columns of the row and its state, lanes across the embedding dimension so that
// every access is coalesced. A hot row's
// occurrences (more than kChunk) are first reduced by one warp per chunk of kChunk
// into partial sums, which the row's warp adds in chunk order: one warp alone took
// milliseconds over a Zipf batch's hottest id (H200, session 16).
#include <cub/cub.cuh>

#include <cstdint>

#include "cuda/bag_checks.cuh"
#include "cuda/kernels.h"

namespace recis::cuda {
namespace {

constexpr int kWarp = 32;
constexpr size_t kAlign = 256;
constexpr int kMaxSharedFloats = 12 * 1024;  // 48 KiB of row-wise Adagrad gradients per block

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

int bit_width(int64_t x) {
  int bits = 0;
  while (x > 0) {
    ++bits;
    x >>= 1;
  }
  return bits;
}

// A row with more than kChunk occurrences is reduced in chunks of kChunk.
constexpr int64_t kChunk = 256;

__host__ __device__ int64_t chunks_of(int64_t count) {
  return count > kChunk ? (count + kChunk - 1) / kChunk : 0;
}

// Every hot row has more than kChunk occurrences, so it has at most
// count / kChunk + 1 < 2 * count / kChunk chunks.
int64_t max_chunks(int64_t nnz) { return 2 * nnz / kChunk + 1; }

size_t cub_temp_bytes(int64_t nnz) {
  size_t sort = 0, rle = 0, scan = 0, inclusive = 0;
  const int n = static_cast<int>(nnz);
  int64_t* none = nullptr;
  cub::DeviceRadixSort::SortPairs(nullptr, sort, none, none, none, none, n);
  cub::DeviceRunLengthEncode::Encode(nullptr, rle, none, none, none, none, n);
  cub::DeviceScan::ExclusiveSum(nullptr, scan, none, none, n);
  cub::DeviceScan::InclusiveSum(nullptr, inclusive, none, none, n);
  size_t m = sort > rle ? sort : rle;
  m = m > scan ? m : scan;
  return m > inclusive ? m : inclusive;
}

// The workspace of a batch of nnz ids, rows at most `stride` floats wide: every array
// holds nnz entries (plus the hot rows' partial sums and cub's temp storage).
struct Workspace {
  int64_t* keys_in;
  int64_t* keys_out;
  int64_t* pos_in;
  int64_t* pos_out;  // positions grouped by key
  int64_t* bag_of;   // position -> its bag in its table
  int64_t* unique_keys;
  int64_t* counts;
  int64_t* starts;
  int64_t* num_unique;
  int64_t* row_chunks;  // per unique row, its chunks (0 unless hot); in keys_in after the sort
  int64_t* chunk_end;   // inclusive scan of row_chunks; in pos_in after the sort
  float* partial;       // [max_chunks(nnz), stride] the chunks' sums
  int64_t stride;
  void* cub_temp;
  size_t cub_bytes;
  size_t bytes;  // the whole workspace
};

// Lays the workspace out from `base`; with base 0 it only measures (bytes).
Workspace carve(void* base, int64_t nnz, int64_t max_dim) {
  const auto origin = reinterpret_cast<uintptr_t>(base);
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const uintptr_t p = origin + at;
    at += align_up(bytes);
    return p;
  };
  const size_t arr = sizeof(int64_t) * static_cast<size_t>(nnz > 0 ? nnz : 1);
  Workspace w{};
  int64_t** arrays[] = {&w.keys_in, &w.keys_out,    &w.pos_in, &w.pos_out,
                        &w.bag_of,  &w.unique_keys, &w.counts, &w.starts};
  for (int64_t** a : arrays) *a = reinterpret_cast<int64_t*>(take(arr));
  w.row_chunks = w.keys_in;
  w.chunk_end = w.pos_in;
  w.num_unique = reinterpret_cast<int64_t*>(take(sizeof(int64_t)));
  w.stride = max_dim > 0 ? max_dim : 1;
  w.partial = reinterpret_cast<float*>(
      take(sizeof(float) * static_cast<size_t>(max_chunks(nnz) * w.stride)));
  w.cub_bytes = cub_temp_bytes(nnz);
  w.cub_temp = reinterpret_cast<void*>(take(w.cub_bytes));
  w.bytes = at;
  return w;
}

// The last table t whose field is <= v (table 0's fields are 0). A table with nothing
// in the field's range starts where the next one does, so the last is the one that holds v.
__device__ int last_table_with(const SparseTable* tables, int num_tables,
                               int64_t SparseTable::*field, int64_t v) {
  int lo = 0, hi = num_tables;  // the answer is in [lo, hi)
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (tables[mid].*field <= v) lo = mid; else hi = mid;
  }
  return lo;
}

__global__ void batch_keys_kernel(const SparseTable* __restrict__ tables, int num_tables,
                                  int64_t nnz, int64_t num_offsets, Workspace w,
                                  int32_t* __restrict__ bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t p = first; p < nnz; p += stride) {
    const int t = last_table_with(tables, num_tables, &SparseTable::first_pos, p);
    const SparseTable& s = tables[t];
    const int64_t j = p - s.first_pos, id = s.ids[j];
    const bool ok = id_ok(id, s.rows);
    if (!ok) bad[t] = 1;
    w.keys_in[p] = s.first_key + (ok ? id : 0);
    w.pos_in[p] = p;
    // Its bag: the last b with offsets[b] <= j (skips empty bags).
    int64_t lo = 0, hi = s.num_bags;  // the answer is in [lo, hi)
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (s.offsets[mid] <= j) lo = mid; else hi = mid;
    }
    w.bag_of[p] = lo;
  }
  for (int64_t e = first; e < num_offsets; e += stride) {
    const int t = last_table_with(tables, num_tables, &SparseTable::first_offset, e);
    const SparseTable& s = tables[t];
    if (!offsets_entry_ok(s.offsets, e - s.first_offset, s.num_bags, s.nnz)) bad[t] = 1;
  }
}

// Sorts, groups and counts the batch's keys; leaves the unique count on the device.
void dedup(const SparseBatch& b, const Workspace& w, cudaStream_t stream) {
  const int n = static_cast<int>(b.nnz);
  const int end_bit = bit_width(b.keys > 1 ? b.keys - 1 : 1);
  size_t bytes = w.cub_bytes;
  cub::DeviceRadixSort::SortPairs(w.cub_temp, bytes, w.keys_in, w.keys_out, w.pos_in, w.pos_out,
                                  n, 0, end_bit, stream);
  bytes = w.cub_bytes;
  cub::DeviceRunLengthEncode::Encode(w.cub_temp, bytes, w.keys_out, w.unique_keys, w.counts,
                                     w.num_unique, n, stream);
  bytes = w.cub_bytes;
  cub::DeviceScan::ExclusiveSum(w.cub_temp, bytes, w.counts, w.starts, n, stream);
}

// The table of unique row u, and its row in that table.
__device__ int table_of_row(const SparseBatch& b, const Workspace& w, int64_t u, int64_t* row) {
  const int64_t key = w.unique_keys[u];
  const int t = last_table_with(b.tables, b.num_tables, &SparseTable::first_key, key);
  *row = key - b.tables[t].first_key;
  return t;
}

// A warp works on a row kBlock columns at a time, lane l on columns block + l + 32c
// (c < kColumnsPerLane), in registers: a row of up to kBlock floats (the usual widths)
// is read, reduced, updated and written without shared memory, and its weight and
// state loads are issued before its gradient is summed, so that they are in flight
// meanwhile. Through shared memory, each add waited for the last (the row-wise Adagrad
// step took 1.8x as long on an H200, session 16).
constexpr int kColumnsPerLane = 4;
constexpr int64_t kBlock = kWarp * kColumnsPerLane;
using Lanes = float[kColumnsPerLane];

// v = the lane's columns of block `block` of p[0, dim), 0 past dim.
__device__ void load_block(const float* p, int64_t block, int64_t dim, int lane, Lanes& v) {
#pragma unroll
  for (int c = 0; c < kColumnsPerLane; ++c) {
    const int64_t col = block + lane + c * kWarp;
    v[c] = col < dim ? p[col] : 0.0f;
  }
}

__device__ void store_block(const Lanes& v, float* p, int64_t block, int64_t dim, int lane) {
#pragma unroll
  for (int c = 0; c < kColumnsPerLane; ++c) {
    const int64_t col = block + lane + c * kWarp;
    if (col < dim) p[col] = v[c];
  }
}

// acc = the lane's columns of block `block` of the sum of the gradients of table s's
// grouped occurrences [begin, end), in occurrence order (0 past dim). The lanes first
// fetch 32 occurrences' bags and multipliers at once, then add their gradient rows in
// order.
__device__ void sum_occurrences(const SparseTable& s, const Workspace& w, int64_t begin,
                                int64_t end, int64_t block, int lane, Lanes& acc) {
  const int64_t col = block + lane;
#pragma unroll
  for (int c = 0; c < kColumnsPerLane; ++c) acc[c] = 0.0f;
  for (int64_t first = begin; first < end; first += kWarp) {
    long long bag = 0;
    float scale = 0.0f;
    if (first + lane < end) {
      const int64_t p = w.pos_out[first + lane];
      bag = w.bag_of[p];
      scale = s.psw ? s.psw[p - s.first_pos] : 1.0f;
      if (s.mean) scale /= static_cast<float>(s.offsets[bag + 1] - s.offsets[bag]);
    }
    const int n = end - first < kWarp ? static_cast<int>(end - first) : kWarp;
#pragma unroll 4
    for (int i = 0; i < n; ++i) {
      const long long b = __shfl_sync(0xffffffffu, bag, i);
      const float m = __shfl_sync(0xffffffffu, scale, i);
      const float* go = s.grad_out + b * s.grad_stride + col;
#pragma unroll
      for (int c = 0; c < kColumnsPerLane; ++c) {
        if (col + c * kWarp < s.dim) acc[c] += m * go[c * kWarp];
      }
    }
  }
}

// Each unique row's chunk count, 0 past the unique rows (counts holds garbage there).
__global__ void row_chunks_kernel(Workspace w, int64_t n) {
  const int64_t num_unique = *w.num_unique;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < n;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    w.row_chunks[u] = u < num_unique ? chunks_of(w.counts[u]) : 0;
  }
}

// One warp per chunk q of a hot row: partial[q] = the sum of its kChunk occurrences.
__global__ void chunk_reduce_kernel(SparseBatch b, Workspace w) {
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t num_unique = *w.num_unique;
  const int64_t total = num_unique > 0 ? w.chunk_end[num_unique - 1] : 0;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * warps + warp; q < total;
       q += static_cast<int64_t>(gridDim.x) * warps) {
    int64_t lo = 0, hi = num_unique;  // the row: the first u with chunk_end[u] > q
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (w.chunk_end[mid] > q) hi = mid; else lo = mid + 1;
    }
    const int64_t u = lo, count = w.counts[u];
    const int64_t k = q - (w.chunk_end[u] - w.row_chunks[u]);
    const int64_t begin = w.starts[u] + k * kChunk, row_end = w.starts[u] + count;
    const int64_t end = begin + kChunk < row_end ? begin + kChunk : row_end;
    int64_t row;
    const SparseTable s = b.tables[table_of_row(b, w, u, &row)];
    for (int64_t block = 0; block < s.dim; block += kBlock) {
      Lanes acc;
      sum_occurrences(s, w, begin, end, block, lane, acc);
      store_block(acc, w.partial + q * w.stride, block, s.dim, lane);
    }
  }
}

// g = the lane's columns of block `block` of unique row u's gradient: its occurrences'
// sum, or its chunks' in order (0 past dim).
__device__ void row_gradient(const SparseTable& s, const Workspace& w, int64_t u, int64_t block,
                             int lane, Lanes& g) {
  const int64_t count = w.counts[u], chunks = chunks_of(count);
  if (chunks == 0) return sum_occurrences(s, w, w.starts[u], w.starts[u] + count, block, lane, g);
  const float* part = w.partial + (w.chunk_end[u] - chunks) * w.stride;
#pragma unroll
  for (int c = 0; c < kColumnsPerLane; ++c) g[c] = 0.0f;
  for (int64_t q = 0; q < chunks; ++q) {
    Lanes chunk;
    load_block(part + q * w.stride, block, s.dim, lane, chunk);
#pragma unroll
    for (int c = 0; c < kColumnsPerLane; ++c) g[c] += chunk[c];
  }
}

// Reduces the hot rows' chunks into w.partial (after dedup; row_gradient reads them).
void reduce_hot_rows(const SparseBatch& b, const Workspace& w, cudaStream_t stream) {
  const int threads = 256;
  row_chunks_kernel<<<grid_for(b.nnz, threads), threads, 0, stream>>>(w, b.nnz);
  size_t bytes = w.cub_bytes;
  cub::DeviceScan::InclusiveSum(w.cub_temp, bytes, w.row_chunks, w.chunk_end,
                                static_cast<int>(b.nnz), stream);
  const int warps = 8;
  chunk_reduce_kernel<<<grid_for(max_chunks(b.nnz), warps), warps * kWarp, 0, stream>>>(b, w);
}

__device__ float warp_sum(float v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Row-wise Adagrad needs the whole row's mean square before it changes any column: a
// row wider than kBlock keeps its gradient in `spill` (shared memory, each lane its own
// columns) between the two passes; a narrower one keeps it in registers.
__device__ void rowwise_adagrad_row(const SparseTable& s, const Workspace& w, int64_t u,
                                    int64_t row, int lane, float* spill) {
  const SparseOptimParams p = s.params;
  const int64_t dim = s.dim;
  float* wr = s.weight + row * dim;
  const float before = s.state0[row];
  float sq = 0.0f;
  Lanes wv, g;
  for (int64_t block = 0; block < dim; block += kBlock) {
    load_block(wr, block, dim, lane, wv);
    row_gradient(s, w, u, block, lane, g);
#pragma unroll
    for (int c = 0; c < kColumnsPerLane; ++c) {
      const float gd = g[c] + p.weight_decay * wv[c];  // 0 past dim
      sq += gd * gd;
    }
    if (dim > kBlock) store_block(g, spill, block, dim, lane);
  }
  const float sum = before + warp_sum(sq) / static_cast<float>(dim);
  const float step = p.lr / (sqrtf(sum) + p.eps);
  for (int64_t block = 0; block < dim; block += kBlock) {
    if (dim > kBlock) {
      load_block(wr, block, dim, lane, wv);
      load_block(spill, block, dim, lane, g);
    }
#pragma unroll
    for (int c = 0; c < kColumnsPerLane; ++c) wv[c] -= step * (g[c] + p.weight_decay * wv[c]);
    store_block(wv, wr, block, dim, lane);
  }
  if (lane == 0) s.state0[row] = sum;
}

// SGD, Adagrad, Adam / AdamW: column by column, a block at a time.
template <SparseOptim kOpt>
__device__ void elementwise_row(const SparseTable& s, const Workspace& w, int64_t u,
                                int64_t row, int lane) {
  const SparseOptimParams p = s.params;
  const int64_t dim = s.dim;
  float* wr = s.weight + row * dim;
  float* s0 = s.state0 ? s.state0 + row * dim : nullptr;
  float* s1 = s.state1 ? s.state1 + row * dim : nullptr;
  for (int64_t block = 0; block < dim; block += kBlock) {
    Lanes wv, a, b, g;
    load_block(wr, block, dim, lane, wv);
    if constexpr (kOpt != SparseOptim::kSgd) load_block(s0, block, dim, lane, a);
    if constexpr (kOpt == SparseOptim::kAdam) load_block(s1, block, dim, lane, b);
    row_gradient(s, w, u, block, lane, g);
#pragma unroll
    for (int c = 0; c < kColumnsPerLane; ++c) {
      if constexpr (kOpt == SparseOptim::kSgd) {
        wv[c] -= p.lr * (g[c] + p.weight_decay * wv[c]);
      } else if constexpr (kOpt == SparseOptim::kAdagrad) {
        const float gd = g[c] + p.weight_decay * wv[c];
        a[c] += gd * gd;
        wv[c] -= p.lr * gd / (sqrtf(a[c]) + p.eps);
      } else {  // Adam / AdamW: a = exp_avg, b = exp_avg_sq
        const float gd = g[c] + (p.decoupled ? 0.0f : p.weight_decay) * wv[c];
        const float shrink = p.decoupled ? 1.0f - p.lr * p.weight_decay : 1.0f;
        a[c] += (1.0f - p.beta1) * (gd - a[c]);
        b[c] = p.beta2 * b[c] + (1.0f - p.beta2) * gd * gd;
        wv[c] = wv[c] * shrink - p.step_size * a[c] / (sqrtf(b[c]) * p.inv_bc2_sqrt + p.eps);
      }
    }
    store_block(wv, wr, block, dim, lane);
    if constexpr (kOpt != SparseOptim::kSgd) store_block(a, s0, block, dim, lane);
    if constexpr (kOpt == SparseOptim::kAdam) store_block(b, s1, block, dim, lane);
  }
}

// Capped at 64 registers (4 blocks of 8 warps per SM), which spills a few: uncapped it
// took 72-102 and the step was 0.99-1.20x as long (H200, session 17, alternating A/B).
template <SparseOptim kOpt>
__global__ void __launch_bounds__(256, 4) fused_update_kernel(SparseBatch b, Workspace w) {
  extern __shared__ float smem[];  // row-wise Adagrad rows wider than kBlock
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t num_unique = *w.num_unique;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * warps + warp; u < num_unique;
       u += static_cast<int64_t>(gridDim.x) * warps) {
    int64_t row;
    const SparseTable s = b.tables[table_of_row(b, w, u, &row)];  // in registers
    if (s.dim == 0) continue;  // as on the CPU: no row to change, no state either
    if constexpr (kOpt == SparseOptim::kRowWiseAdagrad) {
      rowwise_adagrad_row(s, w, u, row, lane, smem + static_cast<int64_t>(warp) * w.stride);
    } else {
      elementwise_row<kOpt>(s, w, u, row, lane);
    }
  }
}

// unique_row_grads: a batch of one table, whose keys are its rows.
__global__ void store_grads_kernel(SparseBatch b, Workspace w, int64_t num_unique,
                                   int64_t* __restrict__ unique_ids, float* __restrict__ grads) {
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const SparseTable s = b.tables[0];
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * warps + warp; u < num_unique;
       u += static_cast<int64_t>(gridDim.x) * warps) {
    for (int64_t block = 0; block < s.dim; block += kBlock) {
      Lanes g;
      row_gradient(s, w, u, block, lane, g);
      store_block(g, grads + u * s.dim, block, s.dim, lane);
    }
    if (lane == 0) unique_ids[u] = w.unique_keys[u];
  }
}

template <SparseOptim kOpt>
void launch_update(const SparseBatch& b, const Workspace& w, cudaStream_t stream) {
  int warps = 8;
  size_t shared = 0;
  if (kOpt == SparseOptim::kRowWiseAdagrad && w.stride > kBlock) {
    warps = static_cast<int>(kMaxSharedFloats / w.stride >= 8 ? 8 : kMaxSharedFloats / w.stride);
    shared = sizeof(float) * static_cast<size_t>(warps * w.stride);
  }
  const int blocks = grid_for(b.nnz, warps);  // nnz bounds the unique count
  fused_update_kernel<kOpt><<<blocks, warps * kWarp, shared, stream>>>(b, w);
}

}  // namespace

int64_t max_sparse_update_dim() { return kMaxSharedFloats; }

size_t sparse_update_workspace_bytes(int64_t nnz, int64_t max_dim) {
  return carve(nullptr, nnz, max_dim).bytes;
}

void sparse_batch_keys(const SparseBatch& batch, void* workspace, int32_t* bad,
                       cudaStream_t stream) {
  const Workspace w = carve(workspace, batch.nnz, batch.max_dim);
  const int threads = 256;
  const int64_t items = batch.nnz > batch.offsets ? batch.nnz : batch.offsets;
  batch_keys_kernel<<<grid_for(items, threads), threads, 0, stream>>>(
      batch.tables, batch.num_tables, batch.nnz, batch.offsets, w, bad);
}

void sparse_update_f32(SparseOptim kind, const SparseBatch& batch, void* workspace,
                       cudaStream_t stream) {
  if (batch.nnz == 0) return;
  const Workspace w = carve(workspace, batch.nnz, batch.max_dim);
  dedup(batch, w, stream);
  reduce_hot_rows(batch, w, stream);
  switch (kind) {
    case SparseOptim::kSgd: return launch_update<SparseOptim::kSgd>(batch, w, stream);
    case SparseOptim::kAdagrad: return launch_update<SparseOptim::kAdagrad>(batch, w, stream);
    case SparseOptim::kRowWiseAdagrad:
      return launch_update<SparseOptim::kRowWiseAdagrad>(batch, w, stream);
    case SparseOptim::kAdam: return launch_update<SparseOptim::kAdam>(batch, w, stream);
  }
}

int64_t unique_rows(const SparseBatch& batch, void* workspace, cudaStream_t stream) {
  if (batch.nnz == 0) return 0;
  const Workspace w = carve(workspace, batch.nnz, batch.max_dim);
  dedup(batch, w, stream);
  int64_t count = 0;
  cudaMemcpyAsync(&count, w.num_unique, sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
  cudaStreamSynchronize(stream);
  return count;
}

void unique_row_grads_f32(const SparseBatch& batch, void* workspace, int64_t num_unique,
                          int64_t* unique_ids, float* grads, cudaStream_t stream) {
  if (num_unique == 0) return;
  const Workspace w = carve(workspace, batch.nnz, batch.max_dim);
  reduce_hot_rows(batch, w, stream);
  const int warps = 8;
  store_grads_kernel<<<grid_for(num_unique, warps), warps * kWarp, 0, stream>>>(
      batch, w, num_unique, unique_ids, grads);
}

}  // namespace recis::cuda
