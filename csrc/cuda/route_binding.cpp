// ATen binding of the CUDA routing (route.cu): check and convert the tensors, move the
// plan to the device, launch on the current stream. Compiled only when torch has CUDA
// (setup.py).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "cpu/route_checks.h"
#include "cuda/kernels.h"

namespace recis {
namespace {

// Host int64 tensors, flattened into one device tensor (one copy); pointers into it.
std::pair<at::Tensor, std::vector<const int64_t*>> to_device(std::vector<at::Tensor> parts,
                                                             const at::Device& device) {
  std::vector<int64_t> starts;
  int64_t total = 0;
  for (auto& p : parts) {
    p = p.reshape(-1).to(at::kLong);
    starts.push_back(total);
    total += p.numel();
  }
  const auto flat = at::cat(parts).to(device);
  std::vector<const int64_t*> ptrs;
  for (const int64_t start : starts) ptrs.push_back(flat.data_ptr<int64_t>() + start);
  return {flat, ptrs};
}

at::Tensor host_tensor(const std::vector<int64_t>& v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> route_cuda(
    const at::Tensor& values, const at::Tensor& lengths, const std::optional<at::Tensor>& weights,
    int64_t batch, const at::Tensor& key_table, const at::Tensor& key_feature,
    const at::Tensor& table_bounds, const at::Tensor& table_slots, const at::Tensor& table_divide,
    const at::Tensor& slot_features, const at::Tensor& slot_dest, bool with_positions) {
  check_route(values, lengths, weights, batch, key_table, key_feature, table_bounds, table_slots,
              table_divide, slot_features, slot_dest);
  TORCH_CHECK(values.is_cuda(), "recis.route: values, lengths and weights must be on one device ",
              "(the plan on the host), got values on ", values.device());
  const int64_t blocks = table_slots.size(1);
  const int64_t copies = table_slots.size(2), num_slots = slot_features.numel();
  const int64_t* sf = slot_features.data_ptr<int64_t>();
  const int64_t* sd = slot_dest.data_ptr<int64_t>();
  const c10::cuda::CUDAGuard guard(values.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto vals = values.to(at::kLong).contiguous();
  const auto len = lengths.to(at::kLong).contiguous();
  at::Tensor w;
  if (weights.has_value()) w = weights->to(at::kFloat).contiguous();
  const int64_t n = vals.numel(), num_bags = len.numel();
  std::vector<int64_t> bag_base = route_bag_base(sf, num_slots, batch);

  // bag_base last: base_dev below is the tail of plan_dev.
  auto [plan_dev, p] = to_device({key_table, key_feature, table_bounds, table_slots,
                                  table_divide, host_tensor(bag_base)},
                                 values.device());
  const cuda::RoutePlan plan{p[0], p[1], p[2], p[3], p[4], p[5], blocks, copies, batch};
  auto bag_start = at::zeros({num_bags + 1}, len.options());
  if (num_bags) bag_start.narrow(0, 1, num_bags).copy_(at::cumsum(len, 0));
  auto block = at::empty({n}, vals.options().dtype(at::kInt));
  auto counts = at::zeros({bag_base[num_slots]}, len.options());
  auto bad = at::full({1}, n, len.options());
  cuda::route_count(vals.data_ptr<int64_t>(), n, bag_start.data_ptr<int64_t>(), num_bags, plan,
                    block.data_ptr<int32_t>(), counts.data_ptr<int64_t>(),
                    reinterpret_cast<unsigned long long*>(bad.data_ptr<int64_t>()), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // One copy to the host: [lengths bad, first bad value, values per slot].
  auto run = at::zeros({bag_base[num_slots] + 1}, len.options());
  if (bag_base[num_slots]) run.narrow(0, 1, bag_base[num_slots]).copy_(at::cumsum(counts, 0));
  const auto base_dev = plan_dev.narrow(0, plan_dev.numel() - (num_slots + 1), num_slots + 1);
  const auto slot_values = run.index_select(0, base_dev.narrow(0, 1, num_slots)) -
                           run.index_select(0, base_dev.narrow(0, 0, num_slots));
  at::Tensor lengths_bad = bag_start[num_bags] != n;
  if (num_bags) lengths_bad = lengths_bad | (len < 0).any();
  const auto host = at::cat({lengths_bad.to(at::kLong).view(1), bad, slot_values}).cpu();
  const int64_t* h = host.data_ptr<int64_t>();
  if (h[0]) check_route_lengths(len.cpu().data_ptr<int64_t>(), num_bags, n);
  if (h[1] < n) {
    const int64_t j = h[1];
    const auto starts = bag_start.cpu();
    const int64_t* st = starts.data_ptr<int64_t>();
    const int64_t bag = std::upper_bound(st, st + num_bags + 1, j) - st - 1;
    const int64_t f = bag / batch, t = key_table.data_ptr<int64_t>()[f];
    const int64_t* bnd = table_bounds.data_ptr<int64_t>() + t * (blocks + 1);
    raise_value_outside_table(vals[j].item<int64_t>(), j, f, t, bnd[0], bnd[blocks]);
  }
  const RouteLayout layout = route_layout(std::move(bag_base), h + 2, sd, num_slots);

  auto [shift_dev, q] = to_device({host_tensor(layout.id_shift), host_tensor(layout.bag_shift)},
                                  values.device());
  auto send_ints = at::zeros({layout.send_ints}, len.options());
  const bool any_divide = table_divide.any().item<bool>();
  auto send_w = at::empty({w.defined() || any_divide ? layout.send_ids : 0},
                          len.options().dtype(at::kFloat));
  auto positions = at::empty({with_positions ? layout.send_ids : 0}, len.options());
  auto cursor = run.narrow(0, 0, layout.bag_base[num_slots]);  // exclusive scan
  cuda::route_write(vals.data_ptr<int64_t>(), w.defined() ? w.data_ptr<float>() : nullptr,
                    len.data_ptr<int64_t>(), bag_start.data_ptr<int64_t>(), num_bags, plan,
                    block.data_ptr<int32_t>(), counts.data_ptr<int64_t>(),
                    cursor.data_ptr<int64_t>(), q[0], q[1], send_ints.data_ptr<int64_t>(),
                    send_w.numel() ? send_w.data_ptr<float>() : nullptr,
                    with_positions ? positions.data_ptr<int64_t>() : nullptr, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {send_ints, send_w, host.narrow(0, 2, num_slots).clone(), positions};
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CUDA, m) { m.impl("route", &route_cuda); }

}  // namespace recis
