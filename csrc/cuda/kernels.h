// Launchers of the CUDA kernels. Plain C++ types only, so that the .cu files need
// no torch headers; csrc/cuda/bindings.cpp adapts ATen tensors to these calls.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace recis::cuda {

// See the pooled_lookup schema in csrc/ops.cpp. Ids outside [0, rows) contribute
// nothing (the Python layer validates ids before the call).
void pooled_lookup_f32(const float* weight, int64_t rows, int64_t dim, const int64_t* ids,
                       const int64_t* offsets, const float* per_sample_weights, int64_t num_bags,
                       bool mean, float* out, cudaStream_t stream);

// Row bucketization (see the bucketize schema in csrc/ops.cpp), in two launches around
// an exclusive scan done by the binding. bag_start has num_bags + 1 entries; ids must lie
// in [boundaries[0], boundaries[num_buckets]) (the Python layer validates them).
// counts ([num_buckets * num_bags], zeroed by the caller) gets ids per (bucket, bag).
void bucketize_count(const int64_t* ids, const int64_t* bag_start, int64_t num_bags,
                     const int64_t* boundaries, int64_t num_buckets, int32_t* bucket,
                     int64_t* counts, cudaStream_t stream);
// slot_start: exclusive scan of counts. weights / out_weights may be null.
void bucketize_write(const int64_t* ids, const float* weights, const int64_t* bag_start,
                     int64_t num_bags, const int64_t* boundaries, const int32_t* bucket,
                     const int64_t* slot_start, int64_t* out_ids, float* out_weights,
                     int64_t* permutation, cudaStream_t stream);

}  // namespace recis::cuda
