// CPU pairwise dot interaction (DLRM): parallel over samples; the inner loops
// (cpu/dot_interaction_kernel.h) are compiled for baseline x86-64 and for AVX2+FMA,
// chosen at run time (cpu/isa.h). Replaces bmm + triangle gather + two concatenations,
// whose per-sample overhead dominates at DLRM's small sizes (27 x 27 of dim 16).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include "cpu/isa.h"

namespace recis {
namespace {
namespace isa_base {
constexpr int64_t kVecBytes = 16;  // SSE2
#include "cpu/dot_interaction_kernel.h"
}  // namespace isa_base

#if RECIS_HAVE_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
constexpr int64_t kVecBytes = 32;
#include "cpu/dot_interaction_kernel.h"
}  // namespace isa_avx2
#pragma GCC pop_options
#endif

constexpr int64_t kSamplesPerTask = 32;
constexpr int64_t kMaxLanes = 8;  // floats per AVX2 vector: the widest padding

// Checks dense [B, D] and embeddings [B, F * D]; returns n = F + 1.
int64_t check_inputs(const char* op, const at::Tensor& dense, const at::Tensor& emb) {
  TORCH_CHECK(dense.dim() == 2 && emb.dim() == 2, op,
              ": dense must be [B, D] and embeddings [B, F * D], got ", dense.sizes(), " and ",
              emb.sizes());
  TORCH_CHECK(dense.size(0) == emb.size(0), op, ": dense has ", dense.size(0),
              " samples but embeddings has ", emb.size(0));
  const int64_t dim = dense.size(1);
  TORCH_CHECK(dim > 0, op, ": dense needs at least one column, got ", dense.sizes());
  TORCH_CHECK(emb.size(1) % dim == 0, op, ": embeddings width ", emb.size(1),
              " is not a multiple of the dense width ", dim);
  TORCH_CHECK(dense.scalar_type() == emb.scalar_type(), op, ": dense is ", dense.scalar_type(),
              " but embeddings is ", emb.scalar_type());
  TORCH_CHECK(dense.scalar_type() == at::kFloat || dense.scalar_type() == at::kDouble, op,
              ": needs float32 or float64, got ", dense.scalar_type());
  TORCH_CHECK(dense.device().is_cpu() && emb.device().is_cpu(), op, ": CPU kernel got ",
              dense.device(), " and ", emb.device());
  return emb.size(1) / dim + 1;
}

at::Tensor dot_interaction_cpu(const at::Tensor& dense_in, const at::Tensor& emb_in) {
  const int64_t n = check_inputs("recis.dot_interaction", dense_in, emb_in);
  const auto dense = dense_in.contiguous();
  const auto emb = emb_in.contiguous();
  const int64_t batch = dense.size(0), dim = dense.size(1);
  auto out = at::empty({batch, dim + n * (n - 1) / 2}, dense.options());
  AT_DISPATCH_FLOATING_TYPES(dense.scalar_type(), "dot_interaction", [&] {
    at::parallel_for(0, batch, kSamplesPerTask, [&](int64_t begin, int64_t end) {
      // xt [D, n padded to the lanes] (zeroed); gram [n, n padded].
      std::vector<scalar_t> xt(dim * (n + kMaxLanes)), gram(n * (n + kMaxLanes));
      const auto args =
          std::make_tuple(dense.data_ptr<scalar_t>(), emb.data_ptr<scalar_t>(), n, dim,
                          out.data_ptr<scalar_t>(), begin, end, xt.data(), gram.data());
#if RECIS_HAVE_AVX2_KERNELS
      if (cpu_isa() >= Isa::kAvx2) return std::apply(isa_avx2::interact_forward<scalar_t>, args);
#endif
      std::apply(isa_base::interact_forward<scalar_t>, args);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dot_interaction_backward_cpu(const at::Tensor& grad_in,
                                                                const at::Tensor& dense_in,
                                                                const at::Tensor& emb_in) {
  constexpr const char* op = "recis.dot_interaction_backward";
  const int64_t n = check_inputs(op, dense_in, emb_in);
  const int64_t batch = dense_in.size(0), dim = dense_in.size(1);
  TORCH_CHECK(grad_in.dim() == 2 && grad_in.size(0) == batch &&
                  grad_in.size(1) == dim + n * (n - 1) / 2,
              op, ": grad must be [", batch, ", ", dim + n * (n - 1) / 2, "], got ",
              grad_in.sizes());
  const auto grad = grad_in.to(dense_in.scalar_type()).contiguous();
  const auto dense = dense_in.contiguous();
  const auto emb = emb_in.contiguous();
  auto grad_dense = at::empty_like(dense);
  auto grad_emb = at::empty_like(emb);
  AT_DISPATCH_FLOATING_TYPES(dense.scalar_type(), "dot_interaction_backward", [&] {
    at::parallel_for(0, batch, kSamplesPerTask, [&](int64_t begin, int64_t end) {
      // sym [n, n]; x (zeroed) and gx [n, D padded to the lanes].
      std::vector<scalar_t> sym(n * n), x(n * (dim + kMaxLanes)), gx(n * (dim + kMaxLanes));
      const auto args = std::make_tuple(grad.data_ptr<scalar_t>(), dense.data_ptr<scalar_t>(),
                                        emb.data_ptr<scalar_t>(), n, dim,
                                        grad_dense.data_ptr<scalar_t>(),
                                        grad_emb.data_ptr<scalar_t>(), begin, end, sym.data(),
                                        x.data(), gx.data());
#if RECIS_HAVE_AVX2_KERNELS
      if (cpu_isa() >= Isa::kAvx2) {
        return std::apply(isa_avx2::interact_backward<scalar_t>, args);
      }
#endif
      std::apply(isa_base::interact_backward<scalar_t>, args);
    });
  });
  return {grad_dense, grad_emb};
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CPU, m) {
  m.impl("dot_interaction", &dot_interaction_cpu);
  m.impl("dot_interaction_backward", &dot_interaction_backward_cpu);
}

}  // namespace recis
