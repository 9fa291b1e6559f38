// CUDA row bucketization (see the schema in csrc/ops.cpp). Same two passes as the CPU
// kernel, one thread per bag: count ids per (bucket, bag), then (after the binding's
// exclusive scan of the counts) write each id to its slot, keeping the bag's order.
// The thread that owns bag b owns every (bucket, b) counter and cursor: no atomics.
#include "cuda/kernels.h"

namespace recis::cuda {
namespace {

__device__ int64_t find_bucket(const int64_t* bnd, int64_t num_buckets, int64_t v) {
  // Last k with bnd[k] <= v (upper_bound - 1), so empty buckets are skipped.
  int64_t lo = 0, hi = num_buckets + 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (bnd[mid] <= v) lo = mid + 1; else hi = mid;
  }
  return lo - 1;
}

__global__ void count_kernel(const int64_t* __restrict__ ids, const int64_t* __restrict__ bag_start,
                             int64_t num_bags, const int64_t* __restrict__ bnd, int64_t num_buckets,
                             int32_t* __restrict__ bucket, int64_t* __restrict__ counts) {
  for (int64_t b = blockIdx.x * blockDim.x + threadIdx.x; b < num_bags;
       b += gridDim.x * blockDim.x) {
    for (int64_t j = bag_start[b]; j < bag_start[b + 1]; ++j) {
      const int64_t k = find_bucket(bnd, num_buckets, ids[j]);
      bucket[j] = static_cast<int32_t>(k);
      counts[k * num_bags + b] += 1;  // one thread owns bag b: no race
    }
  }
}

__global__ void write_kernel(const int64_t* __restrict__ ids, const float* __restrict__ w,
                             const int64_t* __restrict__ bag_start, int64_t num_bags,
                             const int64_t* __restrict__ bnd, const int32_t* __restrict__ bucket,
                             int64_t* __restrict__ slot_cursor, int64_t* __restrict__ out_ids,
                             float* __restrict__ out_w, int64_t* __restrict__ perm) {
  for (int64_t b = blockIdx.x * blockDim.x + threadIdx.x; b < num_bags;
       b += gridDim.x * blockDim.x) {
    for (int64_t j = bag_start[b]; j < bag_start[b + 1]; ++j) {
      const int32_t k = bucket[j];
      const int64_t pos = slot_cursor[k * num_bags + b]++;
      out_ids[pos] = ids[j] - bnd[k];
      perm[pos] = j;
      if (w) out_w[pos] = w[j];
    }
  }
}

}  // namespace

void bucketize_count(const int64_t* ids, const int64_t* bag_start, int64_t num_bags,
                     const int64_t* boundaries, int64_t num_buckets, int32_t* bucket,
                     int64_t* counts, cudaStream_t stream) {
  if (num_bags == 0) return;
  count_kernel<<<grid_for(num_bags, 256), 256, 0, stream>>>(ids, bag_start, num_bags, boundaries,
                                                            num_buckets, bucket, counts);
}

void bucketize_write(const int64_t* ids, const float* weights, const int64_t* bag_start,
                     int64_t num_bags, const int64_t* boundaries, const int32_t* bucket,
                     int64_t* slot_cursor, int64_t* out_ids, float* out_weights,
                     int64_t* permutation, cudaStream_t stream) {
  if (num_bags == 0) return;
  write_kernel<<<grid_for(num_bags, 256), 256, 0, stream>>>(ids, weights, bag_start, num_bags,
                                                            boundaries, bucket, slot_cursor,
                                                            out_ids, out_weights, permutation);
}

}  // namespace recis::cuda
