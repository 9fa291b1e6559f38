#pragma once
// Shape/dtype checks of the sparse-gradient ops (unique_row_grads and the fused
// optimizer updates), shared by the CPU kernels and the CUDA bindings.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <initializer_list>
#include <utility>

#include "cpu/common.h"

namespace recis {

// A SparseGrad in bag form: ids/offsets (CSR), optional per-sample weights, and
// grad_out [num_bags, dim] of the pooled outputs.
inline void check_sparse_grad(const char* op, const at::Tensor& ids, const at::Tensor& offsets,
                              const std::optional<at::Tensor>& per_sample_weights,
                              const at::Tensor& grad_out, int64_t dim) {
  TORCH_CHECK(ids.dim() == 1 && offsets.dim() == 1, op, ": ids and offsets must be 1-D, got ",
              ids.sizes(), " and ", offsets.sizes());
  TORCH_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, op,
              ": ids must be int32 or int64, got ", ids.scalar_type());
  TORCH_CHECK(offsets.scalar_type() == ids.scalar_type(), op,
              ": offsets must have the dtype of ids (", ids.scalar_type(), "), got ",
              offsets.scalar_type());
  TORCH_CHECK(offsets.numel() >= 1, op, ": offsets needs num_bags + 1 entries");
  TORCH_CHECK(grad_out.dim() == 2, op, ": grad_out must be 2-D [num_bags, dim], got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.size(0) == offsets.numel() - 1, op, ": grad_out has ", grad_out.size(0),
              " rows but offsets describe ", offsets.numel() - 1, " bags");
  TORCH_CHECK(grad_out.size(1) == dim, op, ": grad_out has dim ", grad_out.size(1),
              " but the table has dim ", dim);
  TORCH_CHECK(grad_out.is_floating_point(), op, ": grad_out must be floating point");
  if (per_sample_weights.has_value()) {
    TORCH_CHECK(per_sample_weights->dim() == 1 && per_sample_weights->numel() == ids.numel(), op,
                ": per_sample_weights must be 1-D with one weight per id (", ids.numel(),
                "), got ", per_sample_weights->sizes());
    TORCH_CHECK(per_sample_weights->is_floating_point(), op,
                ": per_sample_weights must be floating point");
  }
  for (const auto* t : {&ids, &offsets, &grad_out}) {
    TORCH_CHECK(t->device() == grad_out.device(), op, ": all tensors must be on one device");
  }
}

// The table weight and its optimizer state: updated in place, so they must be
// contiguous already (a silent copy would drop the update).
inline void check_table(const char* op, const at::Tensor& weight, const at::Tensor& grad_out) {
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D [rows, dim], got ", weight.sizes());
  TORCH_CHECK(weight.is_contiguous(), op, ": weight must be contiguous (it is updated in place)");
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble, op,
              ": weight must be float32 or float64, got ", weight.scalar_type());
  TORCH_CHECK(grad_out.scalar_type() == weight.scalar_type(), op, ": grad_out dtype ",
              grad_out.scalar_type(), " differs from weight dtype ", weight.scalar_type());
  TORCH_CHECK(grad_out.device() == weight.device(), op,
              ": grad_out and weight must be on one device");
}

// One state tensor: `per_row` -> shape [rows], else [rows, dim]; dtype of weight.
inline void check_state(const char* op, const char* name, const at::Tensor& state,
                        const at::Tensor& weight, bool per_row) {
  if (per_row) {
    TORCH_CHECK(state.dim() == 1 && state.size(0) == weight.size(0), op, ": ", name,
                " must have shape [", weight.size(0), "] (one value per row), got ",
                state.sizes());
  } else {
    TORCH_CHECK(state.sizes() == weight.sizes(), op, ": ", name, " must have the shape of weight ",
                weight.sizes(), ", got ", state.sizes());
  }
  TORCH_CHECK(state.scalar_type() == weight.scalar_type(), op, ": ", name, " dtype ",
              state.scalar_type(), " differs from weight dtype ", weight.scalar_type());
  TORCH_CHECK(state.is_contiguous(), op, ": ", name,
              " must be contiguous (it is updated in place)");
  TORCH_CHECK(state.device() == weight.device(), op, ": ", name,
              " must be on the device of weight");
}

inline void check_hyper(const char* op, std::initializer_list<std::pair<const char*, double>> hs) {
  for (const auto& [name, value] : hs) {
    TORCH_CHECK(value >= 0.0 && std::isfinite(value), op, ": ", name,
                " must be a finite number >= 0, got ", value);
  }
}

// The Adam update's hyper-parameters and list lengths (one entry per table of weights).
inline void check_adam_call(const char* op, double lr, double beta1, double beta2, double eps,
                            double weight_decay, size_t tables, size_t exp_avgs,
                            size_t exp_avg_sqs, size_t steps) {
  check_hyper(op, {{"lr", lr}, {"eps", eps}, {"weight_decay", weight_decay}});
  TORCH_CHECK(beta1 >= 0.0 && beta1 < 1.0 && beta2 >= 0.0 && beta2 < 1.0, op,
              ": betas must be in [0, 1), got (", beta1, ", ", beta2, ")");
  check_one_per_table(op, tables,
                      {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}, {"steps", steps}});
}

// One table of an Adam update: its step count (after this update) and its moments.
inline void check_adam_table(const char* op, int64_t step, const at::Tensor& exp_avg,
                             const at::Tensor& exp_avg_sq, const at::Tensor& weight) {
  TORCH_CHECK(step >= 1, op, ": step must be >= 1 (the count after this update), got ", step);
  check_state(op, "exp_avg", exp_avg, weight, /*per_row=*/false);
  check_state(op, "exp_avg_sq", exp_avg_sq, weight, /*per_row=*/false);
}

}  // namespace recis
