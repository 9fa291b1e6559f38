// CPU pooled lookup: parallel over bags; each bag accumulates its rows in float
// registers over the embedding dimension (the inner loop is contiguous, so the
// compiler vectorises it) and prefetches the row a few ids ahead to hide latency.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/common.h"

namespace recis {
namespace {

constexpr int64_t kPrefetchDistance = 4;

template <typename scalar_t, typename index_t>
void lookup_bags(const scalar_t* weight, int64_t rows, int64_t dim, const index_t* ids,
                 const index_t* offsets, const float* psw, Pooling pooling, scalar_t* out,
                 int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> acc(dim);
  for (int64_t b = begin; b < end; ++b) {
    const int64_t start = offsets[b], stop = offsets[b + 1];
    std::fill(acc.begin(), acc.end(), acc_t(0));
    for (int64_t j = start; j < stop; ++j) {
      if (j + kPrefetchDistance < stop) {
        const int64_t ahead = ids[j + kPrefetchDistance];
        if (ahead >= 0 && ahead < rows) __builtin_prefetch(weight + ahead * dim);
      }
      const int64_t id = ids[j];
      TORCH_CHECK(id >= 0 && id < rows, "recis.pooled_lookup: id ", id, " at position ", j,
                  " is outside [0, ", rows, ")");
      const scalar_t* row = weight + id * dim;
      const acc_t w = psw ? static_cast<acc_t>(psw[j]) : acc_t(1);
      acc_t* a = acc.data();
      for (int64_t d = 0; d < dim; ++d) a[d] += w * static_cast<acc_t>(row[d]);
    }
    const acc_t scale =
        (pooling == Pooling::kMean && stop > start) ? acc_t(1) / acc_t(stop - start) : acc_t(1);
    scalar_t* o = out + b * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] = static_cast<scalar_t>(acc[d] * scale);
  }
}

at::Tensor pooled_lookup_cpu(const at::Tensor& weight, const at::Tensor& ids,
                             const at::Tensor& offsets,
                             const std::optional<at::Tensor>& per_sample_weights,
                             int64_t pooling) {
  check_bags(weight, ids, offsets, per_sample_weights);
  const Pooling mode = to_pooling(pooling);
  const auto w = weight.contiguous();
  const auto ids_c = ids.contiguous();
  const auto offs = offsets.contiguous();
  at::Tensor psw;
  if (per_sample_weights.has_value()) psw = per_sample_weights->to(at::kFloat).contiguous();
  const int64_t num_bags = offs.numel() - 1;
  const int64_t dim = w.size(1);
  auto out = at::empty({num_bags, dim}, w.options());
  if (num_bags == 0 || dim == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "pooled_lookup", [&] {
    AT_DISPATCH_INDEX_TYPES(ids_c.scalar_type(), "pooled_lookup_index", [&] {
      const index_t* o = offs.data_ptr<index_t>();
      TORCH_CHECK(o[0] == 0 && o[num_bags] == ids_c.numel(),
                  "recis.pooled_lookup: offsets must start at 0 and end at ids.numel() (",
                  ids_c.numel(), "), got ", o[0], " .. ", o[num_bags]);
      for (int64_t b = 0; b < num_bags; ++b)
        TORCH_CHECK(o[b] <= o[b + 1], "recis.pooled_lookup: offsets decrease at bag ", b);
      const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(dim, 1));
      at::parallel_for(0, num_bags, grain, [&](int64_t begin, int64_t end) {
        lookup_bags<scalar_t, index_t>(w.data_ptr<scalar_t>(), w.size(0), dim,
                                       ids_c.data_ptr<index_t>(), o,
                                       psw.defined() ? psw.data_ptr<float>() : nullptr, mode,
                                       out.data_ptr<scalar_t>(), begin, end);
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CPU, m) { m.impl("pooled_lookup", &pooled_lookup_cpu); }

}  // namespace recis
