// CPU pooled lookup: parallel over bags; the inner loops (cpu/pooled_lookup_kernel.h)
// are compiled for baseline x86-64, AVX2+FMA and AVX-512, chosen at run time
// (cpu/isa.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "cpu/common.h"
#include "cpu/isa.h"
#include "cpu/prefetch.h"

namespace recis {
namespace {
#define RECIS_ISA_KERNEL "cpu/pooled_lookup_kernel.h"
#include "cpu/isa_kernels.inc"

template <typename scalar_t, typename index_t>
bool lookup_bags(const scalar_t* weight, int64_t rows, int64_t dim, const index_t* ids,
                 const index_t* offsets, const float* psw, bool mean, scalar_t* out,
                 int64_t out_stride, int64_t begin, int64_t end) {
#if RECIS_HAVE_AVX2_KERNELS
  if (cpu_isa() == Isa::kAvx512) {
    return isa_avx512::lookup_bags(weight, rows, dim, ids, offsets, psw, mean, out, out_stride,
                                   begin, end);
  }
  if (cpu_isa() == Isa::kAvx2) {
    return isa_avx2::lookup_bags(weight, rows, dim, ids, offsets, psw, mean, out, out_stride,
                                 begin, end);
  }
#endif
  return isa_base::lookup_bags(weight, rows, dim, ids, offsets, psw, mean, out, out_stride,
                               begin, end);
}

// Writes the pooled bags into `out` [num_bags, dim], which may be a column block of a
// wider tensor (any row stride, unit column stride): a collection of tables fills one
// output without a concatenation. Ids are range-checked inside the pooling pass (a
// separate pass cost ~1.4 ns per id, a third of a lookup of cached rows); on a bad one
// `out` may be partly written when the error is raised.
void pooled_lookup_into_cpu(const at::Tensor& weight, const at::Tensor& ids,
                            const at::Tensor& offsets,
                            const std::optional<at::Tensor>& per_sample_weights, int64_t pooling,
                            at::Tensor& out) {
  check_bags(weight, ids, offsets, per_sample_weights);
  check_pooled_out(weight, offsets, out);
  const Pooling mode = to_pooling(pooling);
  const int64_t num_bags = offsets.numel() - 1;
  const int64_t dim = weight.size(1);
  const auto w = weight.contiguous();
  const auto ids_c = ids.contiguous();
  const auto offs = offsets.contiguous();
  at::Tensor psw;
  if (per_sample_weights.has_value()) psw = per_sample_weights->to(at::kFloat).contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "pooled_lookup", [&] {
    AT_DISPATCH_INDEX_TYPES(ids_c.scalar_type(), "pooled_lookup_index", [&] {
      constexpr const char* op = "recis.pooled_lookup";
      const index_t* o = offs.data_ptr<index_t>();
      const index_t* i = ids_c.data_ptr<index_t>();
      const int64_t nnz = ids_c.numel(), rows = w.size(0);
      check_offsets(op, nnz, o, num_bags);
      if (num_bags == 0 || dim == 0) {
        // Nothing to pool, but ids outside the table are bad input all the same.
        return check_ids_in_range(op, i, nnz, rows);
      }
      std::atomic<bool> in_range{true};
      const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(dim, 1));
      at::parallel_for(0, num_bags, grain, [&](int64_t begin, int64_t end) {
        if (!lookup_bags<scalar_t, index_t>(w.data_ptr<scalar_t>(), rows, dim, i, o,
                                            psw.defined() ? psw.data_ptr<float>() : nullptr,
                                            mode == Pooling::kMean, out.data_ptr<scalar_t>(),
                                            out.stride(0), begin, end)) {
          in_range.store(false, std::memory_order_relaxed);
        }
      });
      if (!in_range.load()) check_ids_in_range(op, i, nnz, rows);  // raises, naming the id
    });
  });
}

at::Tensor pooled_lookup_cpu(const at::Tensor& weight, const at::Tensor& ids,
                             const at::Tensor& offsets,
                             const std::optional<at::Tensor>& per_sample_weights,
                             int64_t pooling) {
  check_bags(weight, ids, offsets, per_sample_weights);
  auto out = at::empty({offsets.numel() - 1, weight.size(1)}, weight.options());
  pooled_lookup_into_cpu(weight, ids, offsets, per_sample_weights, pooling, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CPU, m) {
  m.impl("pooled_lookup", &pooled_lookup_cpu);
  m.impl("pooled_lookup_into", &pooled_lookup_into_cpu);
}

}  // namespace recis
