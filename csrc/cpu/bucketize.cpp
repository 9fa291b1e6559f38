// CPU row bucketization (see the schema in csrc/ops.cpp). Two passes over bags, each
// parallel over bags: (1) find each id's bucket (binary search in the boundaries) and
// count ids per (bucket, bag); (2) after an exclusive scan of the counts, every bag
// writes its ids into its own slots, so no two threads write the same place and the
// original order within a bag is kept.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/bucketize_checks.h"
#include "cpu/common.h"

namespace recis {
namespace {

template <typename index_t>
std::vector<at::Tensor> bucketize_impl(const at::Tensor& ids, const at::Tensor& lengths64,
                                       const at::Tensor& weights, const at::Tensor& bounds) {
  const int64_t n = ids.numel();
  const int64_t num_bags = lengths64.numel();
  const int64_t num_buckets = bounds.numel() - 1;
  const int64_t* len = lengths64.data_ptr<int64_t>();
  const int64_t* bnd = bounds.data_ptr<int64_t>();
  const index_t* id = ids.data_ptr<index_t>();
  std::vector<int64_t> bag_start(num_bags + 1);
  check_bucketize_layout(len, num_bags, bnd, num_buckets, n, bag_start.data());

  std::vector<int32_t> bucket(n);
  // counts[k * num_bags + b]: ids of bag b that fall in bucket k.
  std::vector<int64_t> counts(num_buckets * num_bags + 1, 0);
  const int64_t grain = 256;
  at::parallel_for(0, num_bags, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t j = bag_start[b]; j < bag_start[b + 1]; ++j) {
        const int64_t v = id[j];
        if (v < bnd[0] || v >= bnd[num_buckets]) {
          raise_id_outside_boundaries(v, j, bnd[0], bnd[num_buckets]);
        }
        // The owner is the last bucket whose start is <= v (empty buckets are skipped).
        const int64_t k = std::upper_bound(bnd, bnd + num_buckets + 1, v) - bnd - 1;
        bucket[j] = static_cast<int32_t>(k);
        counts[k * num_bags + b] += 1;
      }
    }
  });

  auto out_lengths = at::empty({num_buckets * num_bags}, lengths64.options());
  int64_t* ol = out_lengths.data_ptr<int64_t>();
  // Exclusive scan: counts becomes each (bucket, bag) slot's first output position.
  int64_t run = 0;
  for (int64_t i = 0; i < num_buckets * num_bags; ++i) {
    ol[i] = counts[i];
    const int64_t c = counts[i];
    counts[i] = run;
    run += c;
  }

  auto out_ids = at::empty({n}, ids.options());
  auto perm = at::empty({n}, ids.options().dtype(at::kLong));
  at::Tensor out_w;
  const bool has_w = weights.defined();
  if (has_w) out_w = at::empty({n}, weights.options());
  index_t* oid = out_ids.data_ptr<index_t>();
  int64_t* op = perm.data_ptr<int64_t>();
  const float* w = has_w ? weights.data_ptr<float>() : nullptr;
  float* ow = has_w ? out_w.data_ptr<float>() : nullptr;
  at::parallel_for(0, num_bags, grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> cursor(num_buckets);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t k = 0; k < num_buckets; ++k) cursor[k] = counts[k * num_bags + b];
      for (int64_t j = bag_start[b]; j < bag_start[b + 1]; ++j) {
        const int32_t k = bucket[j];
        const int64_t pos = cursor[k]++;
        oid[pos] = static_cast<index_t>(id[j] - bnd[k]);
        op[pos] = j;
        if (has_w) ow[pos] = w[j];
      }
    }
  });
  if (!has_w) out_w = at::empty({0}, ids.options().dtype(at::kFloat));
  return {out_lengths, out_ids, out_w, perm};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bucketize_cpu(
    const at::Tensor& ids, const at::Tensor& lengths, const std::optional<at::Tensor>& weights,
    const at::Tensor& boundaries) {
  check_bucketize(ids, lengths, weights, boundaries);
  const auto ids_c = ids.contiguous();
  const auto len = lengths.to(at::kLong).contiguous();
  const auto bnd = boundaries.contiguous();
  at::Tensor w;
  if (weights.has_value()) w = weights->to(at::kFloat).contiguous();
  std::vector<at::Tensor> out;
  AT_DISPATCH_INDEX_TYPES(ids_c.scalar_type(), "bucketize", [&] {
    out = bucketize_impl<index_t>(ids_c, len, w, bnd);
  });
  return {out[0].to(lengths.scalar_type()), out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CPU, m) { m.impl("bucketize", &bucketize_cpu); }

}  // namespace recis
