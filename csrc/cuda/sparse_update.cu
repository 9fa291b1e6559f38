// CUDA per-unique-row gradients and fused sparse-optimizer updates (float32).
//
// Dedup: (id, position) pairs are radix-sorted by id over only the bits the row
// count needs (cub), run-length encoded into unique ids + group sizes, and scanned
// into group starts - everything stays on the device, so the update launches
// without a host sync (its grid strides up to the device-side unique count).
// Update: one warp per unique row; the warp reduces the row's gradient from
// grad_out[bag] * weight (÷ bag length when mean) into shared memory - never an
// nnz x dim tensor - then applies the optimizer to the row and its state, lanes
// across the embedding dimension so that every access is coalesced. A hot row's
// occurrences (more than kChunk) are first reduced by one warp per chunk of kChunk
// into partial sums, which the row's warp adds in chunk order: one warp alone took
// milliseconds over a Zipf batch's hottest id (H200, session 16).
#include <cub/cub.cuh>

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

// Carves the workspace: every array holds nnz entries (plus cub's temp storage).
struct Workspace {
  int64_t* keys_in;
  int64_t* keys_out;
  int64_t* pos_in;
  int64_t* pos_out;  // positions grouped by id
  int64_t* bag_of;   // position -> bag
  int64_t* unique_ids;
  int64_t* counts;
  int64_t* starts;
  int64_t* num_unique;
  int64_t* row_chunks;  // per unique row, its chunks (0 unless hot); in keys_in after the sort
  int64_t* chunk_end;   // inclusive scan of row_chunks; in pos_in after the sort
  float* partial;       // [max_chunks(nnz), dim] the chunks' sums
  void* cub_temp;
  size_t cub_bytes;
};

// A row with more than kChunk occurrences is reduced in chunks of kChunk.
constexpr int64_t kChunk = 256;

__host__ __device__ int64_t chunks_of(int64_t count) {
  return count > kChunk ? (count + kChunk - 1) / kChunk : 0;
}

// Every hot row has more than kChunk occurrences, so it has at most
// count / kChunk + 1 < 2 * count / kChunk chunks.
int64_t max_chunks(int64_t nnz) { return 2 * nnz / kChunk + 1; }

size_t cub_temp_bytes(int64_t nnz) {
  size_t sort = 0, rle = 0, scan = 0;
  const int n = static_cast<int>(nnz);
  cub::DeviceRadixSort::SortPairs(nullptr, sort, static_cast<int64_t*>(nullptr),
                                  static_cast<int64_t*>(nullptr), static_cast<int64_t*>(nullptr),
                                  static_cast<int64_t*>(nullptr), n);
  cub::DeviceRunLengthEncode::Encode(nullptr, rle, static_cast<int64_t*>(nullptr),
                                     static_cast<int64_t*>(nullptr),
                                     static_cast<int64_t*>(nullptr),
                                     static_cast<int64_t*>(nullptr), n);
  cub::DeviceScan::ExclusiveSum(nullptr, scan, static_cast<int64_t*>(nullptr),
                                static_cast<int64_t*>(nullptr), n);
  size_t inclusive = 0;
  cub::DeviceScan::InclusiveSum(nullptr, inclusive, static_cast<int64_t*>(nullptr),
                                static_cast<int64_t*>(nullptr), n);
  size_t m = sort > rle ? sort : rle;
  m = m > scan ? m : scan;
  return m > inclusive ? m : inclusive;
}

size_t partial_bytes(int64_t nnz, int64_t dim) {
  return align_up(sizeof(float) * static_cast<size_t>(max_chunks(nnz) * (dim > 0 ? dim : 1)));
}

Workspace carve(void* base, int64_t nnz, int64_t dim) {
  char* p = static_cast<char*>(base);
  const size_t arr = align_up(sizeof(int64_t) * static_cast<size_t>(nnz > 0 ? nnz : 1));
  Workspace w{};
  int64_t** arrays[] = {&w.keys_in, &w.keys_out,   &w.pos_in, &w.pos_out,
                        &w.bag_of,  &w.unique_ids, &w.counts, &w.starts};
  for (int64_t** a : arrays) {
    *a = reinterpret_cast<int64_t*>(p);
    p += arr;
  }
  w.row_chunks = w.keys_in;
  w.chunk_end = w.pos_in;
  w.num_unique = reinterpret_cast<int64_t*>(p);
  p += kAlign;
  w.partial = reinterpret_cast<float*>(p);
  p += partial_bytes(nnz, dim);
  w.cub_temp = p;
  w.cub_bytes = cub_temp_bytes(nnz);
  return w;
}

__global__ void pairs_kernel(const int64_t* __restrict__ ids, const int64_t* __restrict__ offsets,
                             int64_t num_bags, int64_t nnz, int64_t* keys, int64_t* pos,
                             int64_t* bag_of) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < nnz;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    keys[j] = ids[j];
    pos[j] = j;
    // The bag of position j: the last b with offsets[b] <= j (skips empty bags).
    int64_t lo = 0, hi = num_bags;  // answer in [lo, hi)
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (offsets[mid] <= j) lo = mid; else hi = mid;
    }
    bag_of[j] = lo;
  }
}

// Sorts, groups and counts; leaves the unique count on the device.
void dedup(const SparseGradView& g, int64_t rows, const Workspace& w, cudaStream_t stream) {
  const int threads = 256;
  pairs_kernel<<<grid_for(g.nnz, threads), threads, 0, stream>>>(
      g.ids, g.offsets, g.num_bags, g.nnz, w.keys_in, w.pos_in, w.bag_of);
  const int n = static_cast<int>(g.nnz);
  size_t bytes = w.cub_bytes;
  const int end_bit = bit_width(rows > 1 ? rows - 1 : 1);
  cub::DeviceRadixSort::SortPairs(w.cub_temp, bytes, w.keys_in, w.keys_out, w.pos_in, w.pos_out,
                                  n, 0, end_bit, stream);
  bytes = w.cub_bytes;
  cub::DeviceRunLengthEncode::Encode(w.cub_temp, bytes, w.keys_out, w.unique_ids, w.counts,
                                     w.num_unique, n, stream);
  bytes = w.cub_bytes;
  cub::DeviceScan::ExclusiveSum(w.cub_temp, bytes, w.counts, w.starts, n, stream);
}

// gbuf[d] = the sum of the gradients of the grouped occurrences [begin, end) (lanes of
// one warp share it). The lanes first fetch 32 occurrences' bags and multipliers at
// once, then add their gradient rows in order, each lane over its own columns. The
// sums stay in registers, kColumnsPerLane columns per lane at a time, so that the
// loads of several occurrences are in flight together: added into shared memory, each
// add waited for the last (the row-wise Adagrad step at the kernels benchmark's shape
// took 1.8x as long on an H200, session 16). The sums are in occurrence order.
constexpr int kColumnsPerLane = 4;

__device__ void reduce_occurrences(const SparseGradView& g, const Workspace& w, int64_t begin,
                                   int64_t end, float* gbuf, int lane) {
  const int64_t dim = g.dim;
  for (int64_t block = 0; block < dim; block += kWarp * kColumnsPerLane) {
    const int64_t col = block + lane;
    float acc[kColumnsPerLane];
#pragma unroll
    for (int c = 0; c < kColumnsPerLane; ++c) acc[c] = 0.0f;
    for (int64_t first = begin; first < end; first += kWarp) {
      long long bag = 0;
      float scale = 0.0f;
      if (first + lane < end) {
        const int64_t j = w.pos_out[first + lane];
        bag = w.bag_of[j];
        scale = g.psw ? g.psw[j] : 1.0f;
        if (g.mean) scale /= static_cast<float>(g.offsets[bag + 1] - g.offsets[bag]);
      }
      const int n = end - first < kWarp ? static_cast<int>(end - first) : kWarp;
#pragma unroll 4
      for (int i = 0; i < n; ++i) {
        const long long b = __shfl_sync(0xffffffffu, bag, i);
        const float s = __shfl_sync(0xffffffffu, scale, i);
        const float* go = g.grad_out + b * dim + col;
#pragma unroll
        for (int c = 0; c < kColumnsPerLane; ++c) {
          if (col + c * kWarp < dim) acc[c] += s * go[c * kWarp];
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
__global__ void chunk_reduce_kernel(SparseGradView g, Workspace w) {
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
    const int64_t k = q - (w.chunk_end[u] - chunks_of(count));
    const int64_t begin = w.starts[u] + k * kChunk, row_end = w.starts[u] + count;
    const int64_t end = begin + kChunk < row_end ? begin + kChunk : row_end;
    reduce_occurrences(g, w, begin, end, w.partial + q * g.dim, lane);
  }
}

// gbuf = unique row u's gradient: its occurrences' sum, or its chunks' in order.
__device__ void row_gradient(const SparseGradView& g, const Workspace& w, int64_t u, float* gbuf,
                             int lane) {
  const int64_t count = w.counts[u], chunks = chunks_of(count);
  if (chunks == 0) return reduce_occurrences(g, w, w.starts[u], w.starts[u] + count, gbuf, lane);
  const float* part = w.partial + (w.chunk_end[u] - chunks) * g.dim;
  for (int64_t d = lane; d < g.dim; d += kWarp) {
    float sum = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) sum += part[c * g.dim + d];
    gbuf[d] = sum;
  }
  __syncwarp();
}

// Reduces the hot rows' chunks into w.partial (after dedup; row_gradient reads them).
void reduce_hot_rows(const SparseGradView& g, const Workspace& w, cudaStream_t stream) {
  const int threads = 256;
  row_chunks_kernel<<<grid_for(g.nnz, threads), threads, 0, stream>>>(w, g.nnz);
  size_t bytes = w.cub_bytes;
  cub::DeviceScan::InclusiveSum(w.cub_temp, bytes, w.row_chunks, w.chunk_end,
                                static_cast<int>(g.nnz), stream);
  const int warps = 8;
  chunk_reduce_kernel<<<grid_for(max_chunks(g.nnz), warps), warps * kWarp, 0, stream>>>(g, w);
}

__device__ float warp_sum(float v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <SparseOptim kOpt>
__global__ void fused_update_kernel(SparseOptimParams p, float* __restrict__ weight,
                                    float* __restrict__ s0, float* __restrict__ s1,
                                    SparseGradView g, Workspace w) {
  extern __shared__ float smem[];
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  float* gbuf = smem + static_cast<int64_t>(warp) * g.dim;
  const int64_t num_unique = *w.num_unique;
  const int64_t dim = g.dim;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * warps + warp; u < num_unique;
       u += static_cast<int64_t>(gridDim.x) * warps) {
    row_gradient(g, w, u, gbuf, lane);
    const int64_t row = w.unique_ids[u];
    float* wr = weight + row * dim;
    if constexpr (kOpt == SparseOptim::kSgd) {
      for (int64_t d = lane; d < dim; d += kWarp) {
        wr[d] -= p.lr * (gbuf[d] + p.weight_decay * wr[d]);
      }
    } else if constexpr (kOpt == SparseOptim::kAdagrad) {
      float* sr = s0 + row * dim;
      for (int64_t d = lane; d < dim; d += kWarp) {
        const float gd = gbuf[d] + p.weight_decay * wr[d];
        const float s = sr[d] + gd * gd;
        sr[d] = s;
        wr[d] -= p.lr * gd / (sqrtf(s) + p.eps);
      }
    } else if constexpr (kOpt == SparseOptim::kRowWiseAdagrad) {
      float sq = 0.0f;
      for (int64_t d = lane; d < dim; d += kWarp) {
        const float gd = gbuf[d] + p.weight_decay * wr[d];
        sq += gd * gd;
      }
      const float s = s0[row] + warp_sum(sq) / static_cast<float>(dim);
      const float step = p.lr / (sqrtf(s) + p.eps);
      for (int64_t d = lane; d < dim; d += kWarp) {
        wr[d] -= step * (gbuf[d] + p.weight_decay * wr[d]);
      }
      __syncwarp();
      if (lane == 0) s0[row] = s;
    } else {  // Adam / AdamW
      float* m = s0 + row * dim;
      float* v = s1 + row * dim;
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

__global__ void store_grads_kernel(SparseGradView g, Workspace w, int64_t num_unique,
                                   int64_t* __restrict__ unique_ids, float* __restrict__ grads) {
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * warps + warp; u < num_unique;
       u += static_cast<int64_t>(gridDim.x) * warps) {
    row_gradient(g, w, u, grads + u * g.dim, lane);
    if (lane == 0) unique_ids[u] = w.unique_ids[u];
  }
}

int warps_per_block(int64_t dim) {
  const int64_t fit = kMaxSharedFloats / (dim > 0 ? dim : 1);
  return static_cast<int>(fit >= 8 ? 8 : fit);
}

}  // namespace

int64_t max_sparse_update_dim() { return kMaxSharedFloats; }

size_t sparse_update_workspace_bytes(int64_t nnz, int64_t dim) {
  const size_t arr = align_up(sizeof(int64_t) * static_cast<size_t>(nnz > 0 ? nnz : 1));
  return 8 * arr + kAlign + partial_bytes(nnz, dim) + align_up(cub_temp_bytes(nnz));
}

void sparse_update_f32(SparseOptim kind, const SparseOptimParams& params, float* weight,
                       int64_t rows, float* state0, float* state1, const SparseGradView& grad,
                       void* workspace, cudaStream_t stream) {
  if (grad.nnz == 0 || grad.dim == 0) return;
  const Workspace w = carve(workspace, grad.nnz, grad.dim);
  dedup(grad, rows, w, stream);
  reduce_hot_rows(grad, w, stream);
  const int warps = warps_per_block(grad.dim);
  const int blocks = grid_for(grad.nnz, warps);  // nnz bounds the unique count
  const size_t shared = sizeof(float) * static_cast<size_t>(warps * grad.dim);
  const dim3 threads(warps * kWarp);
  switch (kind) {
    case SparseOptim::kSgd:
      fused_update_kernel<SparseOptim::kSgd>
          <<<blocks, threads, shared, stream>>>(params, weight, state0, state1, grad, w);
      break;
    case SparseOptim::kAdagrad:
      fused_update_kernel<SparseOptim::kAdagrad>
          <<<blocks, threads, shared, stream>>>(params, weight, state0, state1, grad, w);
      break;
    case SparseOptim::kRowWiseAdagrad:
      fused_update_kernel<SparseOptim::kRowWiseAdagrad>
          <<<blocks, threads, shared, stream>>>(params, weight, state0, state1, grad, w);
      break;
    case SparseOptim::kAdam:
      fused_update_kernel<SparseOptim::kAdam>
          <<<blocks, threads, shared, stream>>>(params, weight, state0, state1, grad, w);
      break;
  }
}

int64_t unique_rows(const SparseGradView& grad, int64_t rows, void* workspace,
                    cudaStream_t stream) {
  if (grad.nnz == 0) return 0;
  const Workspace w = carve(workspace, grad.nnz, grad.dim);
  dedup(grad, rows, w, stream);
  int64_t count = 0;
  cudaMemcpyAsync(&count, w.num_unique, sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
  cudaStreamSynchronize(stream);
  return count;
}

void unique_row_grads_f32(const SparseGradView& grad, void* workspace, int64_t num_unique,
                          int64_t* unique_ids, float* grads, cudaStream_t stream) {
  if (num_unique == 0) return;
  const Workspace w = carve(workspace, grad.nnz, grad.dim);
  reduce_hot_rows(grad, w, stream);
  const int warps = 8;
  store_grads_kernel<<<grid_for(num_unique, warps), warps * kWarp, 0, stream>>>(
      grad, w, num_unique, unique_ids, grads);
}

}  // namespace recis::cuda
