// CUDA routing of a batch to the slots of a sharded collection (see the schema in
// csrc/ops.cpp). Same two passes as the CPU kernel, one thread per bag: count values
// per (slot, feature, sample), then (after the binding's exclusive scan of the counts)
// write each value to its places, keeping the bag's order. The thread that owns bag
// (f, b) owns every count and cursor of (slot, feature of f, b): no atomics but the
// error flag's.
#include "cuda/kernels.h"

namespace recis::cuda {
namespace {

// Last i with bnd[i] <= v (upper_bound - 1), so empty blocks are skipped.
__device__ int64_t owning_block(const int64_t* bnd, int64_t num_blocks, int64_t v) {
  int64_t lo = 0, hi = num_blocks + 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (bnd[mid] <= v) lo = mid + 1; else hi = mid;
  }
  return lo - 1;
}

__global__ void count_kernel(const int64_t* __restrict__ values, int64_t n,
                             const int64_t* __restrict__ bag_start, int64_t num_bags,
                             RoutePlan plan, int32_t* __restrict__ block,
                             int64_t* __restrict__ counts, unsigned long long* bad) {
  for (int64_t bag = blockIdx.x * blockDim.x + threadIdx.x; bag < num_bags;
       bag += gridDim.x * blockDim.x) {
    const int64_t f = bag / plan.batch, b = bag % plan.batch, t = plan.key_table[f];
    if (t < 0) continue;
    const int64_t* bnd = plan.bounds + t * (plan.blocks + 1);
    const int64_t* slot = plan.slots + t * plan.blocks * plan.copies;
    const int64_t at = plan.key_feature[f] * plan.batch + b;
    const int64_t start = max(bag_start[bag], int64_t{0}), stop = min(bag_start[bag + 1], n);
    for (int64_t j = start; j < stop; ++j) {
      const int64_t v = values[j];
      if (v < bnd[0] || v >= bnd[plan.blocks]) {
        atomicMin(bad, static_cast<unsigned long long>(j));
        continue;
      }
      const int64_t k = owning_block(bnd, plan.blocks, v);
      block[j] = static_cast<int32_t>(k);
      for (int64_t r = 0; r < plan.copies && slot[k * plan.copies + r] >= 0; ++r) {
        counts[plan.bag_base[slot[k * plan.copies + r]] + at] += 1;
      }
    }
  }
}

__global__ void write_kernel(const int64_t* __restrict__ values,
                             const float* __restrict__ in_weights,
                             const int64_t* __restrict__ lengths,
                             const int64_t* __restrict__ bag_start, int64_t num_bags,
                             RoutePlan plan, const int32_t* __restrict__ block,
                             const int64_t* __restrict__ counts, int64_t* __restrict__ cursor,
                             const int64_t* __restrict__ id_shift,
                             const int64_t* __restrict__ bag_shift, int64_t* __restrict__ send_ints,
                             float* __restrict__ send_weights, int64_t* __restrict__ positions) {
  const int64_t cells = plan.blocks * plan.copies;
  for (int64_t bag = blockIdx.x * blockDim.x + threadIdx.x; bag < num_bags;
       bag += gridDim.x * blockDim.x) {
    const int64_t f = bag / plan.batch, b = bag % plan.batch, t = plan.key_table[f];
    if (t < 0) continue;
    const int64_t* bnd = plan.bounds + t * (plan.blocks + 1);
    const int64_t* slot = plan.slots + t * cells;
    const int64_t at = plan.key_feature[f] * plan.batch + b;
    for (int64_t i = 0; i < cells; ++i) {  // this bag's length in every slot of its table
      const int64_t s = slot[i];
      if (s >= 0) send_ints[plan.bag_base[s] + at + bag_shift[s]] = counts[plan.bag_base[s] + at];
    }
    // Divided, not scaled by 1 / length: the same float as torch's weight / length.
    const float length = plan.divide[t] ? static_cast<float>(max(lengths[bag], int64_t{1})) : 1.0f;
    for (int64_t j = bag_start[bag]; j < bag_start[bag + 1]; ++j) {
      const int32_t k = block[j];
      const int64_t local = values[j] - bnd[k];
      const float w = (in_weights ? in_weights[j] : 1.0f) / length;
      for (int64_t r = 0; r < plan.copies && slot[k * plan.copies + r] >= 0; ++r) {
        const int64_t s = slot[k * plan.copies + r];
        const int64_t pos = cursor[plan.bag_base[s] + at]++;
        send_ints[pos + id_shift[s]] = local;
        if (send_weights) send_weights[pos] = w;
        if (positions) positions[pos] = j;
      }
    }
  }
}

}  // namespace

void route_count(const int64_t* values, int64_t n, const int64_t* bag_start, int64_t num_bags,
                 const RoutePlan& plan, int32_t* block, int64_t* counts,
                 unsigned long long* bad, cudaStream_t stream) {
  if (num_bags == 0) return;
  count_kernel<<<grid_for(num_bags, 256), 256, 0, stream>>>(values, n, bag_start, num_bags, plan,
                                                            block, counts, bad);
}

void route_write(const int64_t* values, const float* in_weights, const int64_t* lengths,
                 const int64_t* bag_start, int64_t num_bags, const RoutePlan& plan,
                 const int32_t* block, const int64_t* counts, int64_t* cursor,
                 const int64_t* id_shift, const int64_t* bag_shift, int64_t* send_ints,
                 float* send_weights, int64_t* positions, cudaStream_t stream) {
  if (num_bags == 0) return;
  write_kernel<<<grid_for(num_bags, 256), 256, 0, stream>>>(
      values, in_weights, lengths, bag_start, num_bags, plan, block, counts, cursor, id_shift,
      bag_shift, send_ints, send_weights, positions);
}

}  // namespace recis::cuda
