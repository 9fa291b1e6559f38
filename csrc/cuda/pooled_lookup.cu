// CUDA pooled lookup: one block per bag (grid-stride), threads across the embedding
// dimension so that each row read is coalesced.
#include "cuda/bag_checks.cuh"
#include "cuda/kernels.h"

namespace recis::cuda {
namespace {

__global__ void pooled_lookup_kernel(const float* __restrict__ weight, int64_t rows, int64_t dim,
                                     const int64_t* __restrict__ ids,
                                     const int64_t* __restrict__ offsets,
                                     const float* __restrict__ psw, int64_t num_bags, bool mean,
                                     float* __restrict__ out, int64_t out_stride) {
  for (int64_t b = blockIdx.x; b < num_bags; b += gridDim.x) {
    const int64_t start = offsets[b], stop = offsets[b + 1];
    const float scale = (mean && stop > start) ? 1.0f / static_cast<float>(stop - start) : 1.0f;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      float acc = 0.0f;
      for (int64_t j = start; j < stop; ++j) {
        const int64_t id = ids[j];
        if (id < 0 || id >= rows) continue;
        acc += (psw ? psw[j] : 1.0f) * __ldg(weight + id * dim + d);
      }
      out[b * out_stride + d] = acc * scale;
    }
  }
}

__global__ void check_bags_kernel(const int64_t* __restrict__ ids, int64_t nnz,
                                  const int64_t* __restrict__ offsets, int64_t num_bags,
                                  int64_t rows, int32_t* bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t j = first; j < nnz; j += stride) {
    if (!id_ok(ids[j], rows)) *bad = 1;
  }
  for (int64_t b = first; b <= num_bags; b += stride) {
    if (!offsets_entry_ok(offsets, b, num_bags, nnz)) *bad = 1;
  }
}

}  // namespace

void flag_bad_bags(const int64_t* ids, int64_t nnz, const int64_t* offsets, int64_t num_bags,
                int64_t rows, int32_t* bad, cudaStream_t stream) {
  const int threads = 256;
  const int64_t items = nnz > num_bags + 1 ? nnz : num_bags + 1;
  check_bags_kernel<<<grid_for(items, threads), threads, 0, stream>>>(ids, nnz, offsets, num_bags,
                                                                      rows, bad);
}

void pooled_lookup_f32(const float* weight, int64_t rows, int64_t dim, const int64_t* ids,
                       const int64_t* offsets, const float* per_sample_weights, int64_t num_bags,
                       bool mean, float* out, int64_t out_stride, cudaStream_t stream) {
  if (num_bags == 0 || dim == 0) return;
  const int threads = dim >= 128 ? 128 : (dim >= 64 ? 64 : 32);
  pooled_lookup_kernel<<<grid_for(num_bags, 1), threads, 0, stream>>>(
      weight, rows, dim, ids, offsets, per_sample_weights, num_bags, mean, out, out_stride);
}

}  // namespace recis::cuda
