// CPU pooled lookup: parallel over bags; the inner loops (cpu/pooled_lookup_kernel.h)
// are compiled for baseline x86-64, AVX2+FMA and AVX-512, chosen at run time
// (cpu/isa.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

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

// Pools features x B bags (feature-major: bag f * B + b) into `block` [B, features * dim]
// (any row stride, unit column stride): bag f * B + b lands in row b from column
// f * dim. A collection's tables fill one output so, without a concatenation or a
// regrouping copy. Ids are range-checked inside the pooling pass (a separate pass cost
// ~1.4 ns per id, a third of a lookup of cached rows); on a bad one `block` may be
// partly written when the error is raised.
void pool_bags(const char* op, const at::Tensor& weight, const at::Tensor& ids,
               const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
               bool mean, int64_t features, at::Tensor& block) {
  const int64_t batch = block.size(0), num_bags = offsets.numel() - 1;
  const int64_t dim = weight.size(1);
  const auto w = weight.contiguous();
  const auto ids_c = ids.contiguous();
  const auto offs = offsets.contiguous();
  at::Tensor psw;
  if (per_sample_weights.has_value()) psw = per_sample_weights->to(at::kFloat).contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "pooled_lookup", [&] {
    AT_DISPATCH_INDEX_TYPES(ids_c.scalar_type(), "pooled_lookup_index", [&] {
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
        // The range may cross features: each feature's bags go to its own columns.
        for (int64_t f = begin / batch; f < features && f * batch < end; ++f) {
          const int64_t first = std::max(begin, f * batch), last = std::min(end, (f + 1) * batch);
          if (!lookup_bags<scalar_t, index_t>(
                  w.data_ptr<scalar_t>(), rows, dim, i, o + f * batch,
                  psw.defined() ? psw.data_ptr<float>() : nullptr, mean,
                  block.data_ptr<scalar_t>() + f * dim, block.stride(0), first - f * batch,
                  last - f * batch)) {
            in_range.store(false, std::memory_order_relaxed);
          }
        }
      });
      if (!in_range.load()) check_ids_in_range(op, i, nnz, rows);  // raises, naming the id
    });
  });
}

void pooled_lookup_into_cpu(const at::Tensor& weight, const at::Tensor& ids,
                            const at::Tensor& offsets,
                            const std::optional<at::Tensor>& per_sample_weights, int64_t pooling,
                            at::Tensor& out) {
  constexpr const char* op = "recis.pooled_lookup";
  check_bags(weight, ids, offsets, per_sample_weights, op);
  check_pooled_out(op, weight, offsets, out);
  const bool mean = to_pooling(op, pooling) == Pooling::kMean;
  pool_bags(op, weight, ids, offsets, per_sample_weights, mean, 1, out);
}

at::Tensor pooled_lookup_cpu(const at::Tensor& weight, const at::Tensor& ids,
                             const at::Tensor& offsets,
                             const std::optional<at::Tensor>& per_sample_weights,
                             int64_t pooling) {
  check_bags(weight, ids, offsets, per_sample_weights, "recis.pooled_lookup");
  auto out = at::empty({offsets.numel() - 1, weight.size(1)}, weight.options());
  pooled_lookup_into_cpu(weight, ids, offsets, per_sample_weights, pooling, out);
  return out;
}

void pooled_lookup_tables_cpu(at::TensorList weights, at::TensorList ids, at::TensorList offsets,
                              const c10::List<std::optional<at::Tensor>>& per_sample_weights,
                              const c10::List<bool>& mean, at::IntArrayRef features,
                              at::Tensor& out) {
  constexpr const char* op = "recis.pooled_lookup_tables";
  const std::vector<int64_t> columns =
      check_lookup_tables(op, weights, ids, offsets, per_sample_weights, mean, features, out);
  const size_t n = weights.size();
  for (size_t t = 0; t < n; ++t) {
    const std::string top = table_in_op(op, t, n);
    const at::Tensor& weight = weights[t];
    const int64_t dim = weight.size(1), batch = out.size(0);
    at::Tensor block = out.narrow(1, columns[t], features[t] * dim);
    if (weight.scalar_type() == out.scalar_type()) {
      pool_bags(top.c_str(), weight, ids[t], offsets[t], per_sample_weights.get(t), mean.get(t),
                features[t], block);
    } else {  // pooled in the weight's dtype, then converted into its block
      at::Tensor pooled = at::empty({features[t] * batch, dim}, weight.options());
      pool_bags(top.c_str(), weight, ids[t], offsets[t], per_sample_weights.get(t), mean.get(t),
                1, pooled);
      const at::Tensor by_sample = pooled.view({features[t], batch, dim}).transpose(0, 1);
      block.view({batch, features[t], dim}).copy_(by_sample);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CPU, m) {
  m.impl("pooled_lookup", &pooled_lookup_cpu);
  m.impl("pooled_lookup_into", &pooled_lookup_into_cpu);
  m.impl("pooled_lookup_tables", &pooled_lookup_tables_cpu);
}

}  // namespace recis
