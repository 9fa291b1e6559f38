// Every recis op schema, in one place. Kernels register implementations per
// dispatch key: csrc/cpu/*.cpp (CPU) and csrc/cuda/bindings.cpp (CUDA).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(recis, m) {
  // Pooled embedding lookup of one table: out[b] = pool_{j in bag b} w_j * weight[ids[j]].
  // offsets has num_bags + 1 entries (CSR). pooling: 0 = sum, 1 = mean (empty bag -> 0).
  m.def(
      "pooled_lookup(Tensor weight, Tensor ids, Tensor offsets, Tensor? per_sample_weights, "
      "int pooling) -> Tensor");
  // Row bucketization for row-wise sharding: bucket k owns global rows
  // [boundaries[k], boundaries[k+1]). Returns (bucket_lengths [K * num_bags], bucket-major;
  // bucket_ids: ids made local to their bucket, ordered bucket, bag, original position;
  // bucket_weights: weights in the same order, or an empty tensor when weights is None;
  // permutation: bucket_ids[j] came from ids[permutation[j]]).
  m.def(
      "bucketize(Tensor ids, Tensor lengths, Tensor? weights, Tensor boundaries) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
}

// `import recis._C` loads this library, which registers the ops above with torch.
static struct PyModuleDef recis_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&recis_module); }
