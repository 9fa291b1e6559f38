// CUDA per-unique-row gradients and fused sparse-optimizer updates (float32).
//
// Dedup: (id, position) pairs are radix-sorted by id over only the bits the row
// count needs (cub), run-length encoded into unique ids + group sizes, and scanned
// into group starts - everything stays on the device, so the update launches
// without a host sync (its grid strides up to the device-side unique count).
// Update: one warp per unique row; the warp reduces the row's gradient from
// grad_out[bag] * weight (÷ bag length when mean) into shared memory - never an
// nnz x dim tensor - then applies the optimizer to the row and its state, lanes
// across the embedding dimension so that every access is coalesced.
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
  void* cub_temp;
  size_t cub_bytes;
};

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
  size_t m = sort > rle ? sort : rle;
  return m > scan ? m : scan;
}

Workspace carve(void* base, int64_t nnz) {
  char* p = static_cast<char*>(base);
  const size_t arr = align_up(sizeof(int64_t) * static_cast<size_t>(nnz > 0 ? nnz : 1));
  Workspace w{};
  int64_t** arrays[] = {&w.keys_in, &w.keys_out,   &w.pos_in, &w.pos_out,
                        &w.bag_of,  &w.unique_ids, &w.counts, &w.starts};
  for (int64_t** a : arrays) {
    *a = reinterpret_cast<int64_t*>(p);
    p += arr;
  }
  w.num_unique = reinterpret_cast<int64_t*>(p);
  p += kAlign;
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
  const int64_t want = (g.nnz + threads - 1) / threads;
  const int blocks = static_cast<int>(want < 65535 ? (want > 0 ? want : 1) : 65535);
  pairs_kernel<<<blocks, threads, 0, stream>>>(g.ids, g.offsets, g.num_bags, g.nnz, w.keys_in,
                                               w.pos_in, w.bag_of);
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

// gbuf[d] = the reduced gradient of unique row u (lanes of one warp share it). The
// lanes first fetch 32 occurrences' bags and multipliers at once, then add their
// gradient rows in order, each lane over its own columns: fetched one occurrence at a
// time, each add would wait on a chain of dependent loads (position, bag, row), and a
// hot id's thousands of occurrences would keep one warp busy long after the rest.
// The sums are taken in the same order either way.
__device__ void reduce_row(const SparseGradView& g, const Workspace& w, int64_t u, float* gbuf,
                           int lane) {
  for (int64_t d = lane; d < g.dim; d += kWarp) gbuf[d] = 0.0f;
  const int64_t begin = w.starts[u], end = begin + w.counts[u];
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
    for (int i = 0; i < n; ++i) {
      const long long b = __shfl_sync(0xffffffffu, bag, i);
      const float s = __shfl_sync(0xffffffffu, scale, i);
      const float* go = g.grad_out + b * g.dim;
      for (int64_t d = lane; d < g.dim; d += kWarp) gbuf[d] += s * go[d];
    }
  }
  __syncwarp();
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
    reduce_row(g, w, u, gbuf, lane);
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
    reduce_row(g, w, u, grads + u * g.dim, lane);
    if (lane == 0) unique_ids[u] = w.unique_ids[u];
  }
}

int warps_per_block(int64_t dim) {
  const int64_t fit = kMaxSharedFloats / (dim > 0 ? dim : 1);
  return static_cast<int>(fit >= 8 ? 8 : fit);
}

int grid_for(int64_t items, int warps) {
  const int64_t want = (items + warps - 1) / warps;
  return static_cast<int>(want < 65535 ? (want > 0 ? want : 1) : 65535);
}

}  // namespace

int64_t max_sparse_update_dim() { return kMaxSharedFloats; }

size_t sparse_update_workspace_bytes(int64_t nnz) {
  const size_t arr = align_up(sizeof(int64_t) * static_cast<size_t>(nnz > 0 ? nnz : 1));
  return 8 * arr + kAlign + align_up(cub_temp_bytes(nnz));
}

void sparse_update_f32(SparseOptim kind, const SparseOptimParams& params, float* weight,
                       int64_t rows, float* state0, float* state1, const SparseGradView& grad,
                       void* workspace, cudaStream_t stream) {
  if (grad.nnz == 0 || grad.dim == 0) return;
  const Workspace w = carve(workspace, grad.nnz);
  dedup(grad, rows, w, stream);
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
  const Workspace w = carve(workspace, grad.nnz);
  dedup(grad, rows, w, stream);
  int64_t count = 0;
  cudaMemcpyAsync(&count, w.num_unique, sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
  cudaStreamSynchronize(stream);
  return count;
}

void unique_row_grads_f32(const SparseGradView& grad, void* workspace, int64_t num_unique,
                          int64_t* unique_ids, float* grads, cudaStream_t stream) {
  if (num_unique == 0) return;
  const Workspace w = carve(workspace, grad.nnz);
  const int warps = 8;
  store_grads_kernel<<<grid_for(num_unique, warps), warps * kWarp, 0, stream>>>(
      grad, w, num_unique, unique_ids, grads);
}

}  // namespace recis::cuda
