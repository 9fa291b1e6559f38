// Every recis op schema, in one place. Kernels register implementations per
// dispatch key: csrc/cpu/*.cpp (CPU) and csrc/cuda/*_binding.cpp (CUDA).
#include <Python.h>
#include <torch/library.h>

#include "cpu/cache_size.h"
#include "cpu/isa.h"
#include "cpu/table_memory.h"

TORCH_LIBRARY(recis, m) {
  // The instruction set of the CPU kernels (csrc/cpu/isa.h): "" reads it, "auto",
  // "base", "avx2" or "avx512" sets it; returns the one in use.
  m.def("cpu_isa(str set=\"\") -> str", &recis::set_cpu_isa);
  // The CPU's last-level cache in bytes (0: unknown), and the bytes of tables and state
  // of an update call above which it also prefetches rows into L2: -1 reads it, >= 0
  // sets it; returns the one in use (csrc/cpu/cache_size.h).
  m.def("last_level_cache_bytes() -> int", &recis::last_level_cache_bytes);
  m.def("l2_prefetch_threshold(int set=-1) -> int", &recis::l2_prefetch_threshold);
  // Uninitialised CPU memory for a table or its optimizer state, on huge pages when
  // it is 2 MiB or more (csrc/cpu/table_memory.h).
  m.def("empty_table(int[] size, ScalarType dtype) -> Tensor", &recis::empty_table);
  // Bytes of freed empty_table buffers held for reuse (bounded).
  m.def("table_memory_cached_bytes() -> int", &recis::table_memory_cached_bytes);
  // Process-wide malloc policy: keep freed host memory for reuse (glibc only; returns
  // whether it was applied).
  m.def("keep_freed_host_memory(int trim_threshold_bytes) -> bool",
        &recis::keep_freed_host_memory);
  // Pooled embedding lookup of one table: out[b] = pool_{j in bag b} w_j * weight[ids[j]].
  // offsets has num_bags + 1 entries (CSR). pooling: 0 = sum, 1 = mean (empty bag -> 0).
  m.def(
      "pooled_lookup(Tensor weight, Tensor ids, Tensor offsets, Tensor? per_sample_weights, "
      "int pooling) -> Tensor");
  // The same into out [num_bags, dim]: any row stride, contiguous columns (a column block
  // of a wider output).
  m.def(
      "pooled_lookup_into(Tensor weight, Tensor ids, Tensor offsets, Tensor? per_sample_weights, "
      "int pooling, Tensor(a!) out) -> ()");
  // Pooled lookup of a batch of tables into one output out [B, sum_t features[t] * dim_t]
  // (any row stride, contiguous columns), B = out.size(0). Table t's offsets have
  // features[t] * B + 1 entries, its bags feature-major: bag f * B + b (feature f of
  // sample b) is written to out[b] from column sum_{t' < t} features[t'] * dim_t' +
  // f * dim_t. mean[t]: mean pooling, else sum. Errors name the table's index; an id
  // outside its table raises (on CPU out may then be partly written).
  m.def(
      "pooled_lookup_tables(Tensor[] weights, Tensor[] ids, Tensor[] offsets, "
      "Tensor?[] per_sample_weights, bool[] mean, int[] features, Tensor(a!) out) -> ()");
  // Input-dist routing of a batch (the values and lengths of a KeyedJaggedTensor with
  // `batch` samples: key f's bags are lengths[f * batch, (f + 1) * batch)) to the slots
  // of a sharded collection. The plan is host int64 tensors: key f is feature
  // key_feature[f] of table key_table[f] (-1: routed nowhere). Table t's rows are split
  // in blocks [table_bounds[t][i], table_bounds[t][i + 1]) (bounds padded with the last
  // one); a value v of block i goes, as v - table_bounds[t][i], to every slot
  // table_slots[t][i][r] (padded with -1): one per block for row-split tables, one per
  // column chunk otherwise; every slot in at most one place (an empty block may name
  // none). table_divide[t]: its weights become (weight or 1) / bag length (mean
  // pooling over row blocks). Slot s serves slot_features[s] features of
  // its table and is on dest slot_dest[s] (non-decreasing). Returns (send_ints i64: for
  // each dest, its slots' bag lengths in (slot, feature, sample) order, then their
  // values in the same order, the order within a bag kept; send_weights f32: each dest's
  // values' weights, or empty when there are no weights and no table divides;
  // slot_values i64 [slots], on the host: values sent to each slot; positions: the position in
  // `values` of each sent value, in send_weights' order, or empty unless
  // with_positions). A value outside its table's rows raises ValueError.
  m.def(
      "route(Tensor values, Tensor lengths, Tensor? weights, int batch, Tensor key_table, "
      "Tensor key_feature, Tensor table_bounds, Tensor table_slots, Tensor table_divide, "
      "Tensor slot_features, Tensor slot_dest, bool with_positions=False) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  // Criteo records of text lines (label, I1..I13, C1..C26 split by `delimiter`) for
  // recis.io, CPU only: from the start of `text` (uint8), every line that is plain (labels
  // "0"/"1", counts of at most 18 decimal digits with an optional '-', categoricals of at
  // most 16 hex digits, any field but the label empty) is parsed, lines of only blanks
  // skipped, up to the first other line. Returns (labels f64 [n], dense f64 [n, 13],
  // missing counts 0; ids i64 [n, 26], hex % table_sizes[f], missing -> missing_id;
  // ends i64 [n, 2]: byte offset after each record's line and lines read through it;
  // stop i64 [2]: offset and lines read where parsing stopped). Only lines whose number
  // (first_line + lines before it in text) n has phase_lo <= n % modulus < phase_hi are
  // parsed; the others are passed over like blank ones.
  m.def(
      "parse_criteo_lines(Tensor text, int delimiter, int[] table_sizes, int missing_id, "
      "int first_line=0, int modulus=1, int phase_lo=0, int phase_hi=1) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  // A column of n categorical strings in Arrow's layout (string i: data[offsets[i],
  // offsets[i + 1]), int32 or int64 offsets; valid[i] false for a null), CPU only: ids
  // i64 [n], hex % table_size, null or empty -> missing_id; and the first string that is
  // not 1 to 16 hex digits (its id and the rest's missing_id), or -1.
  m.def(
      "parse_hex_column(Tensor offsets, Tensor data, Tensor? valid, int table_size, "
      "int missing_id) -> (Tensor, int)");
  // DLRM's interaction of dense [B, D] and embeddings [B, F * D]: [dense, x_i . x_j for
  // i < j] over x = (dense, embedding_1 .. embedding_F), pairs row-major; and its gradient.
  m.def("dot_interaction(Tensor dense, Tensor embeddings) -> Tensor");
  m.def(
      "dot_interaction_backward(Tensor grad, Tensor dense, Tensor embeddings) -> "
      "(Tensor, Tensor)");

  // --- sparse gradients and fused sparse-optimizer updates (csrc/cpu/sparse_update.cpp) ---
  // A table's gradient in bag form (a SparseGrad): row ids[j] of bag b gets
  // grad_out[b] * per_sample_weights[j] (÷ bag length when mean); duplicates add.
  // Per unique row, ascending: (unique_ids int64 [U], grads [U, dim]). Ids must be in
  // [0, num_rows).
  m.def(
      "unique_row_grads(Tensor ids, Tensor offsets, Tensor? per_sample_weights, "
      "Tensor grad_out, bool mean, int num_rows) -> (Tensor, Tensor)");
  // Fused updates over a batch of tables: list entry t of every list is table t. Each
  // touched row of a weight (and its state) is read and written once, with the
  // gradient reduced over its duplicates; untouched rows do not change. Every table's
  // inputs and ids are checked before any table changes; errors name the table's index.
  // On CUDA the tables of one call share a device and are updated in one pass.
  // w -= lr * (g + weight_decay * w); without weight decay the CPU kernel may apply each
  // occurrence in batch order instead (the same sum, rounded per occurrence).
  m.def(
      "sparse_sgd_update(Tensor(a!)[] weights, Tensor[] ids, Tensor[] offsets, "
      "Tensor?[] per_sample_weights, Tensor[] grad_outs, bool[] mean, float lr, "
      "float weight_decay) -> ()");
  // g += weight_decay * w; s += g^2; w -= lr * g / (sqrt(s) + eps)   (state_sum [rows, dim])
  m.def(
      "sparse_adagrad_update(Tensor(a!)[] weights, Tensor(b!)[] state_sums, Tensor[] ids, "
      "Tensor[] offsets, Tensor?[] per_sample_weights, Tensor[] grad_outs, bool[] mean, "
      "float lr, float eps, float weight_decay) -> ()");
  // g += weight_decay * w; s += mean(g^2); w -= lr * g / (sqrt(s) + eps)   (state_sum [rows])
  m.def(
      "sparse_rowwise_adagrad_update(Tensor(a!)[] weights, Tensor(b!)[] state_sums, "
      "Tensor[] ids, Tensor[] offsets, Tensor?[] per_sample_weights, Tensor[] grad_outs, "
      "bool[] mean, float lr, float eps, float weight_decay) -> ()");
  // torch.optim.Adam (L2 weight decay) or AdamW (decoupled_weight_decay); steps[t] is
  // table t's step count after this update (>= 1), for bias correction.
  m.def(
      "sparse_adam_update(Tensor(a!)[] weights, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor[] ids, Tensor[] offsets, Tensor?[] per_sample_weights, "
      "Tensor[] grad_outs, bool[] mean, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, int[] steps, bool decoupled_weight_decay) -> ()");
}

// `import recis._C` loads this library, which registers the ops above with torch.
static struct PyModuleDef recis_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&recis_module); }
