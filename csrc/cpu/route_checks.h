#pragma once
// Checks of recis.route shared by the CPU kernel and the CUDA binding, so that both
// name a bad input in the same words, and the send layout both derive from the plan.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

namespace recis {

// Where each slot's bags and ids go in the send buffers, worked out on the host.
// Counts are kept per (slot, feature, sample), slots in order: slot s's bags start at
// bag_base[s]. Dests are runs of slots; each dest sends its slots' bag lengths, then
// their ids. An id whose position among all routed ids (slot order) is p goes to
// send_ints[p + id_shift[s]] and send_weights[p]; count c of bag i to send_ints[i +
// bag_shift[s]].
struct RouteLayout {
  std::vector<int64_t> bag_base;  // [slots + 1]
  std::vector<int64_t> id_shift, bag_shift;
  int64_t send_ints = 0, send_ids = 0;
};

// Plan consistency (every key's table and feature, blocks, slots and dests). Host data.
inline void check_route_plan(const int64_t* key_table, const int64_t* key_feature, int64_t keys,
                             const int64_t* bounds, const int64_t* slots, int64_t tables,
                             int64_t blocks, int64_t copies, const int64_t* slot_features,
                             const int64_t* slot_dest, int64_t num_slots) {
  for (int64_t s = 0; s < num_slots; ++s) {
    TORCH_CHECK(slot_features[s] >= 0, "recis.route: slot ", s, " has a negative feature count");
    TORCH_CHECK(s == 0 || slot_dest[s] >= slot_dest[s - 1],
                "recis.route: slot_dest must be non-decreasing (slots grouped by dest)");
  }
  // Every cell is read (an empty block's too: the kernels look up each cell's counts),
  // and a slot's counts belong to one cell: named twice, two threads would count into
  // them at once.
  std::vector<char> named(num_slots, 0);
  for (int64_t t = 0; t < tables; ++t) {
    const int64_t* bnd = bounds + t * (blocks + 1);
    for (int64_t i = 0; i < blocks; ++i) {
      TORCH_CHECK(bnd[i] <= bnd[i + 1], "recis.route: table ", t,
                  "'s bounds must be non-decreasing");
      for (int64_t r = 0; r < copies; ++r) {
        const int64_t s = slots[(t * blocks + i) * copies + r];
        TORCH_CHECK(s >= -1 && s < num_slots, "recis.route: table ", t, " block ", i,
                    " names slot ", s, " of ", num_slots);
        // An empty block gets no ids and may name no slot.
        TORCH_CHECK(r > 0 || s >= 0 || bnd[i] == bnd[i + 1], "recis.route: table ", t,
                    " block ", i, " has no slot");
        TORCH_CHECK(r == 0 || s < 0 || slots[(t * blocks + i) * copies + r - 1] >= 0,
                    "recis.route: table ", t, " block ", i, " names slot ", s,
                    " after a -1 (a block's slots come first, then -1 padding)");
        if (s < 0) continue;
        TORCH_CHECK(!named[s], "recis.route: slot ", s, " is named twice (table ", t, " block ",
                    i, " and an earlier cell)");
        named[s] = 1;
      }
    }
  }
  // Two keys feeding one (table, feature) would count into the same bags.
  std::vector<std::pair<int64_t, int64_t>> fed;
  for (int64_t f = 0; f < keys; ++f) {
    const int64_t t = key_table[f];
    TORCH_CHECK(t >= -1 && t < tables, "recis.route: key ", f, " names table ", t, " of ", tables);
    if (t < 0) continue;
    fed.emplace_back(t, key_feature[f]);
    for (int64_t i = 0; i < blocks * copies; ++i) {
      const int64_t s = slots[t * blocks * copies + i];
      TORCH_CHECK(s < 0 || (key_feature[f] >= 0 && key_feature[f] < slot_features[s]),
                  "recis.route: key ", f, " is feature ", key_feature[f], " of table ", t,
                  " but its slot ", s, " has ", slot_features[s], " features");
    }
  }
  std::sort(fed.begin(), fed.end());
  const auto twice = std::adjacent_find(fed.begin(), fed.end());
  TORCH_CHECK(twice == fed.end(), "recis.route: two keys are feature ", twice->second,
              " of table ", twice->first);
}

// Shapes, dtypes and devices of the batch and the plan (the plan lives on the host), and
// the plan's consistency.
inline void check_route(const at::Tensor& values, const at::Tensor& lengths,
                        const std::optional<at::Tensor>& weights, int64_t batch,
                        const at::Tensor& key_table, const at::Tensor& key_feature,
                        const at::Tensor& table_bounds, const at::Tensor& table_slots,
                        const at::Tensor& table_divide, const at::Tensor& slot_features,
                        const at::Tensor& slot_dest) {
  TORCH_CHECK(values.dim() == 1 && lengths.dim() == 1, "recis.route: values and lengths must be 1-D");
  TORCH_CHECK(values.scalar_type() == at::kLong || values.scalar_type() == at::kInt,
              "recis.route: values must be int32 or int64, got ", values.scalar_type());
  TORCH_CHECK(lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt,
              "recis.route: lengths must be int32 or int64");
  TORCH_CHECK(lengths.device() == values.device(), "recis.route: lengths must be on the values' ",
              "device (", values.device(), "), got ", lengths.device());
  if (weights.has_value()) {
    TORCH_CHECK(weights->dim() == 1 && weights->numel() == values.numel(),
                "recis.route: weights must be 1-D with one weight per value");
    TORCH_CHECK(weights->is_floating_point(), "recis.route: weights must be floating point");
    TORCH_CHECK(weights->device() == values.device(), "recis.route: weights must be on the ",
                "values' device (", values.device(), "), got ", weights->device());
  }
  TORCH_CHECK(batch >= 0, "recis.route: batch must be >= 0, got ", batch);
  const at::Tensor* plan[] = {&key_table, &key_feature, &table_bounds, &table_slots,
                              &slot_features, &slot_dest};
  for (const at::Tensor* t : plan) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->is_contiguous(),
                "recis.route: the plan's tensors must be contiguous int64 host tensors");
  }
  TORCH_CHECK(table_divide.device().is_cpu() && table_divide.scalar_type() == at::kBool &&
                  table_divide.dim() == 1,
              "recis.route: table_divide must be a 1-D bool host tensor");
  const int64_t keys = key_table.numel(), tables = table_divide.numel();
  TORCH_CHECK(key_table.dim() == 1 && key_feature.dim() == 1 && key_feature.numel() == keys,
              "recis.route: key_table and key_feature need one entry per key");
  TORCH_CHECK(lengths.numel() == keys * batch, "recis.route: lengths has ", lengths.numel(),
              " bags but ", keys, " keys x batch ", batch, " = ", keys * batch);
  TORCH_CHECK(table_bounds.dim() == 2 && table_bounds.size(0) == tables && table_bounds.size(1) >= 2,
              "recis.route: table_bounds must be [tables, blocks + 1]");
  TORCH_CHECK(table_slots.dim() == 3 && table_slots.size(0) == tables &&
                  table_slots.size(1) == table_bounds.size(1) - 1,
              "recis.route: table_slots must be [tables, blocks, copies]");
  TORCH_CHECK(slot_features.dim() == 1 && slot_dest.dim() == 1 &&
                  slot_dest.numel() == slot_features.numel(),
              "recis.route: slot_features and slot_dest need one entry per slot");
  check_route_plan(key_table.data_ptr<int64_t>(), key_feature.data_ptr<int64_t>(), keys,
                   table_bounds.data_ptr<int64_t>(), table_slots.data_ptr<int64_t>(), tables,
                   table_slots.size(1), table_slots.size(2), slot_features.data_ptr<int64_t>(),
                   slot_dest.data_ptr<int64_t>(), slot_features.numel());
}

// Lengths non-negative and summing to the n values; bag_start (num_bags + 1) receives
// each bag's first position. Host data.
inline void check_route_lengths(const int64_t* lengths, int64_t num_bags, int64_t n,
                                int64_t* bag_start = nullptr) {
  int64_t sum = 0;
  for (int64_t b = 0; b < num_bags; ++b) {
    TORCH_CHECK(lengths[b] >= 0, "recis.route: lengths[", b, "] is negative");
    if (bag_start != nullptr) bag_start[b] = sum;
    sum += lengths[b];
  }
  if (bag_start != nullptr) bag_start[num_bags] = sum;
  TORCH_CHECK(sum == n, "recis.route: lengths sum to ", sum, " but there are ", n, " values");
}

// bag_base of every slot (features x batch bags each).
inline std::vector<int64_t> route_bag_base(const int64_t* slot_features, int64_t num_slots,
                                           int64_t batch) {
  std::vector<int64_t> base(num_slots + 1, 0);
  for (int64_t s = 0; s < num_slots; ++s) base[s + 1] = base[s] + slot_features[s] * batch;
  return base;
}

// The send layout once the ids of every slot are known.
inline RouteLayout route_layout(std::vector<int64_t> bag_base, const int64_t* slot_ids,
                                const int64_t* slot_dest, int64_t num_slots) {
  RouteLayout out;
  out.bag_base = std::move(bag_base);
  out.id_shift.resize(num_slots);
  out.bag_shift.resize(num_slots);
  int64_t ids_before = 0, bags_before = 0;  // of earlier dests
  for (int64_t first = 0; first < num_slots;) {
    int64_t last = first, dest_ids = 0;
    while (last < num_slots && slot_dest[last] == slot_dest[first]) dest_ids += slot_ids[last++];
    const int64_t dest_bags = out.bag_base[last] - out.bag_base[first];
    for (int64_t s = first; s < last; ++s) {
      out.bag_shift[s] = ids_before;
      out.id_shift[s] = bags_before + dest_bags;
    }
    ids_before += dest_ids;
    bags_before += dest_bags;
    first = last;
  }
  out.send_ids = ids_before;
  out.send_ints = ids_before + bags_before;
  return out;
}

// The error for value v at position j (of key f) outside its table's rows [lo, hi): a
// ValueError in Python, as bad input data is everywhere in recis (the sharded input
// dist relays it to every rank and names the feature).
[[noreturn]] inline void raise_value_outside_table(int64_t v, int64_t j, int64_t f, int64_t t,
                                                   int64_t lo, int64_t hi) {
  TORCH_CHECK_VALUE(false, "recis.route: value ", v, " at position ", j, " (key ", f,
                    ") is outside table ", t, "'s rows [", lo, ", ", hi, ")");
  __builtin_unreachable();
}

}  // namespace recis
