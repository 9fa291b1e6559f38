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

}  // namespace recis::cuda
