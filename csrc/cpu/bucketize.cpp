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

// The last bucket whose start is <= v (empty buckets are skipped), for
// bnd[0] <= v < bnd[num_buckets]. A binary search whose steps are conditional moves:
// ids owned at random defeat the branch predictor, and std::upper_bound's branches
// made the op ~10 ns per id over 2 buckets.
inline int64_t owning_bucket(const int64_t* bnd, int64_t num_buckets, int64_t v) {
  const int64_t* base = bnd;
  for (int64_t n = num_buckets; n > 1;) {
    const int64_t half = n / 2;
    base = base[half] <= v ? base + half : base;
    n -= half;
  }
  return base - bnd;
}

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

  std::vector<int32_t> bucket_of(n);
  // counts[k * num_bags + b]: ids of bag b that fall in bucket k.
  std::vector<int64_t> counts(num_buckets * num_bags + 1, 0);
  const int64_t grain = 256;
  // The loops below read sizes and pointers from locals of their own, not through the
  // lambdas' references: a store to a count or an output might alias those, and GCC
  // reloaded them from memory on every id (perf annotate, session 27).
  const int64_t* starts = bag_start.data();
  int32_t* bucket = bucket_of.data();
  int64_t* count = counts.data();
  at::parallel_for(0, num_bags, grain, [=](int64_t begin, int64_t end) {
    const int64_t lo = bnd[0], hi = bnd[num_buckets], bags = num_bags, nb = num_buckets;
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t j = starts[b], stop = starts[b + 1]; j < stop; ++j) {
        const int64_t v = id[j];
        if (v < lo || v >= hi) raise_id_outside_boundaries(v, j, lo, hi);
        const int64_t k = owning_bucket(bnd, nb, v);
        bucket[j] = static_cast<int32_t>(k);
        count[k * bags + b] += 1;
      }
    }
  });

  auto out_lengths = at::empty({num_buckets * num_bags}, lengths64.options());
  int64_t* ol = out_lengths.data_ptr<int64_t>();
  // Exclusive scan: counts becomes each (bucket, bag) slot's first output position.
  int64_t run = 0;
  for (int64_t i = 0; i < num_buckets * num_bags; ++i) {
    ol[i] = count[i];
    const int64_t c = count[i];
    count[i] = run;
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
  at::parallel_for(0, num_bags, grain, [=](int64_t begin, int64_t end) {
    const int64_t bags = num_bags, nb = num_buckets;
    std::vector<int64_t> cursors(nb);
    int64_t* cursor = cursors.data();
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t k = 0; k < nb; ++k) cursor[k] = count[k * bags + b];
      for (int64_t j = starts[b], stop = starts[b + 1]; j < stop; ++j) {
        const int32_t k = bucket[j];
        const int64_t pos = cursor[k]++;
        oid[pos] = static_cast<index_t>(id[j] - bnd[k]);
        op[pos] = j;
        if (w != nullptr) ow[pos] = w[j];
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
