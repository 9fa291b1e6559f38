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
// grad_out[bag] * weight (÷ bag length when mean) into shared memory - never an
// nnz x dim tensor - then applies its table's optimizer step to the row and its state,
// lanes across the embedding dimension so that every access is coalesced. A hot row's
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
constexpr int kMaxSharedFloats = 12 * 1024;  // 48 KiB of gradient buffers per block

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

// gbuf[d] = the sum of the gradients of table s's grouped occurrences [begin, end)
// (lanes of one warp share it). The lanes first fetch 32 occurrences' bags and
// multipliers at once, then add their gradient rows in order, each lane over its own
// columns. The sums stay in registers, kColumnsPerLane columns per lane at a time, so
// that the loads of several occurrences are in flight together: added into shared
// memory, each add waited for the last (the row-wise Adagrad step at the kernels
// benchmark's shape took 1.8x as long on an H200, session 16). The sums are in
// occurrence order.
constexpr int kColumnsPerLane = 4;

__device__ void reduce_occurrences(const SparseTable& s, const Workspace& w, int64_t begin,
                                   int64_t end, float* gbuf, int lane) {
  const int64_t dim = s.dim;
  for (int64_t block = 0; block < dim; block += kWarp * kColumnsPerLane) {
    const int64_t col = block + lane;
    float acc[kColumnsPerLane];
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
        const float* go = s.grad_out + b * dim + col;
#pragma unroll
        for (int c = 0; c < kColumnsPerLane; ++c) {
          if (col + c * kWarp < dim) acc[c] += m * go[c * kWarp];
        }
      }
    }
#pragma unroll
    for (int c = 0; c < kColumnsPerLane; ++c) {
      if (col + c * kWarp < dim) gbuf[col + c * kWarp] = acc[c];
    }
  }
  __syncwarp();
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
    reduce_occurrences(s, w, begin, end, w.partial + q * w.stride, lane);
  }
}

// gbuf = unique row u's gradient: its occurrences' sum, or its chunks' in order.
__device__ void row_gradient(const SparseTable& s, const Workspace& w, int64_t u, float* gbuf,
                             int lane) {
  const int64_t count = w.counts[u], chunks = chunks_of(count);
  if (chunks == 0) return reduce_occurrences(s, w, w.starts[u], w.starts[u] + count, gbuf, lane);
  const float* part = w.partial + (w.chunk_end[u] - chunks) * w.stride;
  for (int64_t d = lane; d < s.dim; d += kWarp) {
    float sum = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) sum += part[c * w.stride + d];
    gbuf[d] = sum;
  }
  __syncwarp();
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

template <SparseOptim kOpt>
__global__ void fused_update_kernel(SparseBatch b, Workspace w) {
  extern __shared__ float smem[];
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  float* gbuf = smem + static_cast<int64_t>(warp) * w.stride;
  const int64_t num_unique = *w.num_unique;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * warps + warp; u < num_unique;
       u += static_cast<int64_t>(gridDim.x) * warps) {
    int64_t row;
    const SparseTable s = b.tables[table_of_row(b, w, u, &row)];  // in registers
    const int64_t dim = s.dim;
    if (dim == 0) continue;  // as on the CPU: no row to change, no state either
    row_gradient(s, w, u, gbuf, lane);
    const SparseOptimParams p = s.params;
    float* __restrict__ wr = s.weight + row * dim;
    if constexpr (kOpt == SparseOptim::kSgd) {
      for (int64_t d = lane; d < dim; d += kWarp) {
        wr[d] -= p.lr * (gbuf[d] + p.weight_decay * wr[d]);
      }
    } else if constexpr (kOpt == SparseOptim::kAdagrad) {
      float* __restrict__ sr = s.state0 + row * dim;
      for (int64_t d = lane; d < dim; d += kWarp) {
        const float gd = gbuf[d] + p.weight_decay * wr[d];
        const float sum = sr[d] + gd * gd;
        sr[d] = sum;
        wr[d] -= p.lr * gd / (sqrtf(sum) + p.eps);
      }
    } else if constexpr (kOpt == SparseOptim::kRowWiseAdagrad) {
      float sq = 0.0f;
      for (int64_t d = lane; d < dim; d += kWarp) {
        const float gd = gbuf[d] + p.weight_decay * wr[d];
        sq += gd * gd;
      }
      const float sum = s.state0[row] + warp_sum(sq) / static_cast<float>(dim);
      const float step = p.lr / (sqrtf(sum) + p.eps);
      for (int64_t d = lane; d < dim; d += kWarp) {
        wr[d] -= step * (gbuf[d] + p.weight_decay * wr[d]);
      }
      __syncwarp();
      if (lane == 0) s.state0[row] = sum;
    } else {  // Adam / AdamW
      float* __restrict__ m = s.state0 + row * dim;
      float* __restrict__ v = s.state1 + row * dim;
      const float l2 = p.decoupled ? 0.0f : p.weight_decay;
      const float shrink = p.decoupled ? 1.0f - p.lr * p.weight_decay : 1.0f;
      for (int64_t d = lane; d < dim; d += kWarp) {
        const float gd = gbuf[d] + l2 * wr[d];
        const float md = m[d] + (1.0f - p.beta1) * (gd - m[d]);
        const float vd = p.beta2 * v[d] + (1.0f - p.beta2) * gd * gd;
        m[d] = md;
        v[d] = vd;
        wr[d] = wr[d] * shrink - p.step_size * md / (sqrtf(vd) * p.inv_bc2_sqrt + p.eps);
      }
    }
    __syncwarp();
  }
}

// unique_row_grads: a batch of one table, whose keys are its rows.
__global__ void store_grads_kernel(SparseBatch b, Workspace w, int64_t num_unique,
                                   int64_t* __restrict__ unique_ids, float* __restrict__ grads) {
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const SparseTable s = b.tables[0];
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * warps + warp; u < num_unique;
       u += static_cast<int64_t>(gridDim.x) * warps) {
    row_gradient(s, w, u, grads + u * s.dim, lane);
    if (lane == 0) unique_ids[u] = w.unique_keys[u];
  }
}

int warps_per_block(int64_t dim) {
  const int64_t fit = kMaxSharedFloats / (dim > 0 ? dim : 1);
  return static_cast<int>(fit >= 8 ? 8 : fit);
}

template <SparseOptim kOpt>
void launch_update(const SparseBatch& b, const Workspace& w, cudaStream_t stream) {
  const int warps = warps_per_block(w.stride);
  const int blocks = grid_for(b.nnz, warps);  // nnz bounds the unique count
  const size_t shared = sizeof(float) * static_cast<size_t>(warps * w.stride);
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
