// CPU routing of a batch to the slots of a sharded collection (see the schema in
// csrc/ops.cpp). Two passes over bags, each parallel over bags: (1) find each value's
// row block (binary search in its table's bounds) and count values per (slot, feature,
// sample); (2) after an exclusive scan of the counts, every bag writes its values into
// its own places, so no two threads write the same place and the order within a bag
// is kept. A table whose values all go to one block skips the search: its counts are
// the bag lengths and its values are copied in runs.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <vector>

#include "cpu/common.h"
#include "cpu/route_checks.h"

namespace recis {
namespace {

// The last block whose start is <= v (empty blocks are skipped), for
// bnd[0] <= v < bnd[num_blocks]. A binary search whose steps are conditional moves:
// ids owned at random defeat the branch predictor (std::upper_bound's branches made
// the row-wise routing ~10 ns per id over 2 blocks).
inline int64_t owning_block(const int64_t* bnd, int64_t num_blocks, int64_t v) {
  const int64_t* base = bnd;
  for (int64_t n = num_blocks; n > 1;) {
    const int64_t half = n / 2;
    base = base[half] <= v ? base + half : base;
    n -= half;
  }
  return base - bnd;
}

struct Plan {
  const int64_t* key_table;
  const int64_t* key_feature;
  const int64_t* bounds;  // [tables, blocks + 1]
  const int64_t* slots;   // [tables, blocks, copies]
  const bool* divide;     // [tables]
  int64_t tables, blocks, copies;
};

// A table whose values all go to block 0 (whole or column-split, or row-split in one
// block) and keep their weights: its keys' values are copied as they are, in runs.
inline bool whole_table(const Plan& p, int64_t t) {
  const int64_t* bnd = p.bounds + t * (p.blocks + 1);
  return bnd[1] == bnd[p.blocks] && !p.divide[t];
}

template <typename index_t>
std::vector<at::Tensor> route_impl(const at::Tensor& values, const at::Tensor& lengths64,
                                   const at::Tensor& weights, int64_t batch, const Plan& plan,
                                   const int64_t* slot_features, const int64_t* slot_dest,
                                   int64_t num_slots, bool with_positions) {
  const int64_t n = values.numel();
  const int64_t num_bags = lengths64.numel();
  const int64_t* len = lengths64.data_ptr<int64_t>();
  const index_t* val = values.data_ptr<index_t>();
  std::vector<int64_t> bag_starts(num_bags + 1);
  check_route_lengths(len, num_bags, n, bag_starts.data());
  std::vector<int64_t> bag_base = route_bag_base(slot_features, num_slots, batch);
  // Uninitialised (no memset of 4 bytes per value): only row-split keys' values are
  // written and read.
  std::unique_ptr<int32_t[]> block_of(new int32_t[n]);
  // counts[bag_base[s] + feature * batch + b]: values of sample b's bag of that feature
  // that go to slot s.
  std::vector<int64_t> counts(bag_base[num_slots], 0);
  const int64_t grain = 256;
  // The loops read sizes and pointers from locals of their own, not through the
  // lambdas' references: a store to a count or an output might alias those, and GCC
  // reloaded them from memory on every id (perf annotate, session 27). Bags run key by
  // key: what a key's values need (its table's blocks, the rows of counts they add to)
  // is looked up once per run of its bags, not per bag.
  const int64_t* starts = bag_starts.data();
  int32_t* block = block_of.get();
  int64_t* count = counts.data();
  const Plan p = plan;
  const int64_t cells = p.blocks * p.copies;
  // Cell (block k, copy r) of key f's table: count row of slot slots[k][r] for f's
  // feature, or null.
  auto key_cells = [p, batch, cells](int64_t f, int64_t t, const int64_t* base, int64_t* rows,
                                     int64_t** out) {
    const int64_t* slot = p.slots + t * cells;
    for (int64_t i = 0; i < cells; ++i) {
      out[i] = slot[i] < 0 ? nullptr : rows + base[slot[i]] + p.key_feature[f] * batch;
    }
  };
  const int64_t* base = bag_base.data();
  at::parallel_for(0, num_bags, grain, [=](int64_t begin, int64_t end) {
    const int64_t bsz = batch, nb = p.blocks, nc = p.copies;
    std::vector<int64_t*> rows(cells);
    int64_t** row = rows.data();
    for (int64_t bag = begin; bag < end;) {
      const int64_t f = bag / bsz, b0 = bag % bsz, b1 = std::min(bsz, b0 + end - bag);
      bag += b1 - b0;
      const int64_t t = p.key_table[f];
      if (t < 0) continue;
      const int64_t* bnd = p.bounds + t * (nb + 1);
      const int64_t lo = bnd[0], hi = bnd[nb];
      key_cells(f, t, base, count, row);
      const int64_t* first = starts + f * bsz;
      if (whole_table(p, t)) {
        // Every value goes to block 0's slots: the counts are the bag lengths.
        for (int64_t r = 0; r < nc && row[r] != nullptr; ++r) {
          std::copy(len + f * bsz + b0, len + f * bsz + b1, row[r] + b0);
        }
        bool bad = false;
        for (int64_t j = first[b0]; j < first[b1]; ++j) bad |= (val[j] < lo) | (val[j] >= hi);
        for (int64_t j = first[b0]; bad; ++j) {
          if (val[j] < lo || val[j] >= hi) raise_value_outside_table(val[j], j, f, t, lo, hi);
        }
        continue;
      }
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t j = first[b], stop = first[b + 1]; j < stop; ++j) {
          const int64_t v = val[j];
          if (v < lo || v >= hi) raise_value_outside_table(v, j, f, t, lo, hi);
          const int64_t k = owning_block(bnd, nb, v);
          block[j] = static_cast<int32_t>(k);
          // Copy 0 of the block that owns a value always exists (check_route_plan):
          // row-split tables, the common case, have no other.
          int64_t r = 0;
          do row[k * nc + r][b] += 1;
          while (++r < nc && row[k * nc + r] != nullptr);
        }
      }
    }
  });

  std::vector<int64_t> slot_ids(num_slots, 0);
  for (int64_t s = 0; s < num_slots; ++s) {
    for (int64_t i = base[s]; i < base[s + 1]; ++i) slot_ids[s] += count[i];
  }
  const RouteLayout layout = route_layout(std::move(bag_base), slot_ids.data(), slot_dest, num_slots);
  base = layout.bag_base.data();
  auto send_ints = at::empty({layout.send_ints}, lengths64.options());
  int64_t* out = send_ints.data_ptr<int64_t>();
  // Exclusive scan: each count becomes its bag's first position among all routed
  // values; the counts themselves are the lengths sent.
  int64_t run = 0;
  for (int64_t s = 0; s < num_slots; ++s) {
    int64_t* lengths_out = out + layout.bag_shift[s];
    for (int64_t i = base[s]; i < base[s + 1]; ++i) {
      const int64_t c = count[i];
      lengths_out[i] = c;
      count[i] = run;
      run += c;
    }
  }

  // Weights go out when the batch has them or some table divides by the bag length.
  const bool has_w = weights.defined();
  const bool want_w = has_w || std::any_of(p.divide, p.divide + p.tables, [](bool d) { return d; });
  auto send_w = at::empty({want_w ? layout.send_ids : 0}, lengths64.options().dtype(at::kFloat));
  auto positions = at::empty({with_positions ? layout.send_ids : 0}, lengths64.options());
  const float* w = has_w ? weights.data_ptr<float>() : nullptr;
  float* ow = want_w ? send_w.data_ptr<float>() : nullptr;
  int64_t* op = with_positions ? positions.data_ptr<int64_t>() : nullptr;
  const int64_t* slots = p.slots;
  const int64_t* id_shift = layout.id_shift.data();
  at::parallel_for(0, num_bags, grain, [=](int64_t begin, int64_t end) {
    const int64_t bsz = batch, nb = p.blocks, nc = p.copies;
    std::vector<int64_t*> rows(cells);  // cursors
    std::vector<int64_t*> ids_out(cells);
    int64_t** row = rows.data();
    int64_t** ids_at = ids_out.data();
    for (int64_t bag = begin; bag < end;) {
      const int64_t f = bag / bsz, b0 = bag % bsz, b1 = std::min(bsz, b0 + end - bag);
      bag += b1 - b0;
      const int64_t t = p.key_table[f];
      if (t < 0) continue;
      const int64_t* bnd = p.bounds + t * (nb + 1);
      key_cells(f, t, base, count, row);
      for (int64_t i = 0; i < cells; ++i) {
        const int64_t s = slots[t * cells + i];
        ids_at[i] = s < 0 ? nullptr : out + id_shift[s];
      }
      const int64_t* first = starts + f * bsz;
      if (whole_table(p, t)) {
        // The key's values, in order, to the run's place in each of block 0's slots.
        const int64_t j0 = first[b0], n_run = first[b1] - j0, lo = bnd[0];
        for (int64_t r = 0; r < nc && row[r] != nullptr; ++r) {
          const int64_t pos = row[r][b0];
          int64_t* ids = ids_at[r] + pos;
          for (int64_t i = 0; i < n_run; ++i) ids[i] = val[j0 + i] - lo;
          if (ow != nullptr && w != nullptr) std::copy(w + j0, w + j0 + n_run, ow + pos);
          if (ow != nullptr && w == nullptr) std::fill(ow + pos, ow + pos + n_run, 1.0f);
          if (op != nullptr) std::iota(op + pos, op + pos + n_run, j0);
        }
        continue;
      }
      const int64_t* bag_len = len + f * bsz;
      const bool divide = p.divide[t];
      for (int64_t b = b0; b < b1; ++b) {
        // Divided, not scaled by 1 / length: the same float as torch's weight / length.
        const float length = divide ? static_cast<float>(std::max<int64_t>(bag_len[b], 1)) : 1.0f;
        for (int64_t j = first[b], stop = first[b + 1]; j < stop; ++j) {
          const int32_t k = block[j];
          const int64_t local = val[j] - bnd[k];
          int64_t r = 0;
          do {
            const int64_t pos = row[k * nc + r][b]++;
            ids_at[k * nc + r][pos] = local;
            if (ow != nullptr) ow[pos] = (w != nullptr ? w[j] : 1.0f) / length;
            if (op != nullptr) op[pos] = j;
          } while (++r < nc && row[k * nc + r] != nullptr);
        }
      }
    }
  });
  auto ids_per_slot = at::empty({num_slots}, lengths64.options());
  std::copy(slot_ids.begin(), slot_ids.end(), ids_per_slot.data_ptr<int64_t>());
  return {send_ints, send_w, ids_per_slot, positions};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> route_cpu(
    const at::Tensor& values, const at::Tensor& lengths, const std::optional<at::Tensor>& weights,
    int64_t batch, const at::Tensor& key_table, const at::Tensor& key_feature,
    const at::Tensor& table_bounds, const at::Tensor& table_slots, const at::Tensor& table_divide,
    const at::Tensor& slot_features, const at::Tensor& slot_dest, bool with_positions) {
  check_route(values, lengths, weights, batch, key_table, key_feature, table_bounds, table_slots,
              table_divide, slot_features, slot_dest);
  const auto divide = table_divide.contiguous();
  const Plan plan{key_table.data_ptr<int64_t>(), key_feature.data_ptr<int64_t>(),
                  table_bounds.data_ptr<int64_t>(), table_slots.data_ptr<int64_t>(),
                  divide.data_ptr<bool>(), table_divide.numel(), table_slots.size(1),
                  table_slots.size(2)};
  const int64_t num_slots = slot_features.numel();
  const auto vals = values.contiguous();
  const auto len = lengths.to(at::kLong).contiguous();
  at::Tensor w;
  if (weights.has_value()) w = weights->to(at::kFloat).contiguous();
  std::vector<at::Tensor> out;
  AT_DISPATCH_INDEX_TYPES(vals.scalar_type(), "route", [&] {
    out = route_impl<index_t>(vals, len, w, batch, plan, slot_features.data_ptr<int64_t>(),
                              slot_dest.data_ptr<int64_t>(), num_slots, with_positions);
  });
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CPU, m) { m.impl("route", &route_cpu); }

}  // namespace recis
