// The device-side checks of a table's bags, shared by the kernels that range-check
// ids and offsets before they index a table with them.
#pragma once
#include <cstdint>

namespace recis::cuda {

// Entry b of CSR offsets (num_bags + 1 entries over nnz ids): the first 0, the last
// nnz, none below the one before.
__device__ inline bool offsets_entry_ok(const int64_t* offsets, int64_t b, int64_t num_bags,
                                        int64_t nnz) {
  const int64_t o = offsets[b];
  return (b > 0 || o == 0) && (b < num_bags || o == nnz) && (b == 0 || o >= offsets[b - 1]);
}

__device__ inline bool id_ok(int64_t id, int64_t rows) { return id >= 0 && id < rows; }

}  // namespace recis::cuda
