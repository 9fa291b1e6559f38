// Criteo text into model inputs (see the parse_criteo_lines and parse_hex_column
// schemas in csrc/ops.cpp): the fast paths of recis.io's TSV/CSV reader and of its
// Parquet reader's hex-string categoricals. They accept only what they parse exactly as
// Python's RecordParser does (plain decimal counts, plain hex categoricals, labels "0"
// and "1"); at anything else they stop and leave it to Python, which parses it, skips it
// or raises naming it. So both paths always agree.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>

namespace recis {
namespace {

constexpr int kDense = 13;
constexpr int kSparse = 26;

// The ASCII whitespace of Python's str.strip(): a line of only these is skipped.
bool is_blank(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

// Value of each byte as a hex digit; -1 for a byte that is not one.
struct HexDigits {
  int8_t value[256];
  constexpr HexDigits() : value() {
    for (int c = 0; c < 256; ++c) value[c] = -1;
    for (int c = '0'; c <= '9'; ++c) value[c] = static_cast<int8_t>(c - '0');
    for (int c = 'a'; c <= 'f'; ++c) value[c] = static_cast<int8_t>(c - 'a' + 10);
    for (int c = 'A'; c <= 'F'; ++c) value[c] = static_cast<int8_t>(c - 'A' + 10);
  }
};
constexpr HexDigits kHex;

// Each parser reads one field from *p up to the delimiter or the line's end, leaves *p
// on that byte and returns false when the field is not plain.

// The label: "0" or "1".
bool parse_label(const uint8_t** p, const uint8_t* end, uint8_t delimiter, double* out) {
  const uint8_t* q = *p;
  if (q == end || (*q != '0' && *q != '1')) return false;
  *out = *q == '1' ? 1.0 : 0.0;
  ++q;
  if (q != end && *q != delimiter) return false;
  *p = q;
  return true;
}

// An integer count: empty (missing, 0) or an optional '-' and 1 to 18 decimal digits
// (exact in int64; converted to the nearest double, as Python's float() does).
bool parse_count(const uint8_t** p, const uint8_t* end, uint8_t delimiter, double* out) {
  const uint8_t* q = *p;
  if (q == end || *q == delimiter) {
    *out = 0.0;
    return true;
  }
  const bool negative = *q == '-';
  if (negative) ++q;
  const uint8_t* first = q;
  int64_t v = 0;
  for (; q != end && *q != delimiter; ++q) {
    const unsigned d = static_cast<unsigned>(*q) - '0';
    if (d > 9 || q - first == 18) return false;  // not a digit, or a 19th one
    v = v * 10 + d;
  }
  if (q == first) return false;
  *out = static_cast<double>(negative ? -v : v);
  *p = q;
  return true;
}

// A categorical: empty (missing) or 1 to 16 hex digits, taken modulo the table size.
bool parse_hex(const uint8_t** p, const uint8_t* end, uint8_t delimiter, int64_t size,
               int64_t missing, int64_t* out) {
  const uint8_t* q = *p;
  if (q == end || *q == delimiter) {
    *out = missing;
    return true;
  }
  const uint8_t* first = q;
  uint64_t v = 0;
  for (; q != end && *q != delimiter; ++q) {
    const int d = kHex.value[*q];
    if (d < 0 || q - first == 16) return false;
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  *out = static_cast<int64_t>(v % static_cast<uint64_t>(size));
  *p = q;
  return true;
}

// One record's 40 fields from [p, end) (the line without its terminator) into the
// outputs; false (outputs partly written, to be overwritten) when it is not plain.
bool parse_record(const uint8_t* p, const uint8_t* end, uint8_t delimiter, const int64_t* sizes,
                  int64_t missing, double* label, double* dense, int64_t* ids) {
  if (!parse_label(&p, end, delimiter, label)) return false;
  for (int f = 0; f < kDense; ++f) {
    if (p == end) return false;  // fewer than 40 fields
    ++p;                         // the delimiter
    if (!parse_count(&p, end, delimiter, dense + f)) return false;
  }
  for (int f = 0; f < kSparse; ++f) {
    if (p == end) return false;
    ++p;
    if (!parse_hex(&p, end, delimiter, sizes[f], missing, ids + f)) return false;
  }
  return p == end;  // more than 40 fields otherwise
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> parse_criteo_lines_cpu(
    const at::Tensor& text, int64_t delimiter, at::IntArrayRef table_sizes, int64_t missing_id,
    int64_t first_line, int64_t modulus, int64_t phase_lo, int64_t phase_hi) {
  TORCH_CHECK(text.scalar_type() == at::kByte && text.dim() == 1,
              "recis.parse_criteo_lines: text must be a 1-D uint8 tensor, got ",
              text.scalar_type(), " of shape ", text.sizes());
  TORCH_CHECK(delimiter >= 0 && delimiter < 256 && delimiter != '\n',
              "recis.parse_criteo_lines: delimiter must be a byte other than '\\n', got ",
              delimiter);
  TORCH_CHECK(static_cast<int>(table_sizes.size()) == kSparse,
              "recis.parse_criteo_lines: need ", kSparse, " table sizes (C1..C26), got ",
              table_sizes.size());
  for (int f = 0; f < kSparse; ++f) {
    TORCH_CHECK(table_sizes[f] > 0, "recis.parse_criteo_lines: table size of feature C", f + 1,
                " must be > 0, got ", table_sizes[f]);
  }
  TORCH_CHECK(first_line >= 0 && modulus >= 1 && 0 <= phase_lo && phase_lo <= phase_hi &&
                  phase_hi <= modulus,
              "recis.parse_criteo_lines: lines kept must be first_line >= 0 and phases 0 <= ",
              "lo <= hi <= modulus, got first_line ", first_line, ", modulus ", modulus,
              ", phases [", phase_lo, ", ", phase_hi, ")");
  const at::Tensor bytes = text.contiguous();
  const uint8_t* data = bytes.data_ptr<uint8_t>();
  const int64_t size = bytes.numel();
  const bool every_line = phase_hi - phase_lo == modulus;
  auto kept = [&](int64_t line) {
    const int64_t phase = (first_line + line) % modulus;
    return every_line || (phase >= phase_lo && phase < phase_hi);
  };
  // At most one record per line kept: count them for the outputs' size.
  int64_t max_records = 0;
  int64_t line_count = 0;
  for (const uint8_t* q = data; q < data + size; ++line_count) {
    const void* nl = std::memchr(q, '\n', static_cast<size_t>(data + size - q));
    max_records += kept(line_count);
    q = nl == nullptr ? data + size : static_cast<const uint8_t*>(nl) + 1;
  }
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto i64 = at::TensorOptions().dtype(at::kLong);
  at::Tensor labels = at::empty({max_records}, f64);
  at::Tensor dense = at::empty({max_records, kDense}, f64);
  at::Tensor ids = at::empty({max_records, kSparse}, i64);
  at::Tensor ends = at::empty({max_records, 2}, i64);
  double* label_out = labels.data_ptr<double>();
  double* dense_out = dense.data_ptr<double>();
  int64_t* ids_out = ids.data_ptr<int64_t>();
  int64_t* ends_out = ends.data_ptr<int64_t>();
  const int64_t* sizes = table_sizes.data();
  const auto delim = static_cast<uint8_t>(delimiter);

  int64_t n = 0, pos = 0, lines = 0;
  while (pos < size) {
    const uint8_t* line = data + pos;
    const void* nl = std::memchr(line, '\n', static_cast<size_t>(size - pos));
    const uint8_t* content_end = nl == nullptr ? data + size : static_cast<const uint8_t*>(nl);
    const int64_t next = nl == nullptr ? size : (content_end - data) + 1;
    while (content_end > line && content_end[-1] == '\r') --content_end;
    // A line of another phase is passed over unread, like a blank one: another rank's.
    const bool mine = kept(lines);
    bool blank = true;
    for (const uint8_t* q = line; mine && q < content_end && blank; ++q) blank = is_blank(*q);
    if (mine && !blank) {
      if (!parse_record(line, content_end, delim, sizes, missing_id, label_out + n,
                        dense_out + n * kDense, ids_out + n * kSparse)) {
        break;  // Python takes this line
      }
      ends_out[2 * n] = next;
      ends_out[2 * n + 1] = lines + 1;
      ++n;
    }
    ++lines;
    pos = next;
  }
  at::Tensor stop = at::tensor({pos, lines}, i64);
  return {labels.narrow(0, 0, n), dense.narrow(0, 0, n), ids.narrow(0, 0, n),
          ends.narrow(0, 0, n), stop};
}

// Each of n strings (string i: data[offsets[i], offsets[i + 1])) into its id in `out`:
// missing for a null (valid[i] false) or empty one, its hex value % size otherwise.
// Returns the first string that is not 1 to 16 hex digits (it and the rest: missing),
// or -1.
int64_t parse_hex_strings(const int64_t* offsets, int64_t n, const uint8_t* data,
                          const bool* valid, int64_t size, int64_t missing, int64_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (valid != nullptr && !valid[i]) {
      out[i] = missing;
      continue;
    }
    const uint8_t* p = data + offsets[i];
    const uint8_t* end = data + offsets[i + 1];
    // '\n' is not a hex digit: a string holding one stops short of its end.
    if (!parse_hex(&p, end, '\n', size, missing, out + i) || p != end) {
      std::fill(out + i, out + n, missing);
      return i;
    }
  }
  return -1;
}

std::tuple<at::Tensor, int64_t> parse_hex_column_cpu(const at::Tensor& offsets,
                                                     const at::Tensor& data,
                                                     const std::optional<at::Tensor>& valid,
                                                     int64_t table_size, int64_t missing_id) {
  constexpr const char* op = "recis.parse_hex_column";
  TORCH_CHECK((offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong) &&
                  offsets.dim() == 1 && offsets.numel() >= 1,
              op, ": offsets must be a 1-D int32 or int64 tensor of n + 1 entries, got ",
              offsets.scalar_type(), " of shape ", offsets.sizes());
  TORCH_CHECK(data.scalar_type() == at::kByte && data.dim() == 1, op,
              ": data must be a 1-D uint8 tensor, got ", data.scalar_type(), " of shape ",
              data.sizes());
  TORCH_CHECK(table_size > 0, op, ": table_size must be > 0, got ", table_size);
  const int64_t n = offsets.numel() - 1;
  at::Tensor valid_bytes;
  if (valid.has_value()) {
    TORCH_CHECK(valid->scalar_type() == at::kBool && valid->dim() == 1 && valid->numel() == n,
                op, ": valid must be a 1-D bool tensor of ", n, " entries, got ",
                valid->scalar_type(), " of shape ", valid->sizes());
    valid_bytes = valid->contiguous();
  }
  const at::Tensor bounds = offsets.contiguous().to(at::kLong);
  const int64_t* b = bounds.data_ptr<int64_t>();
  // Bounds read out of data are a crash, not a parse failure: check them all first.
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(b[i] >= 0 && b[i] <= b[i + 1], op, ": offsets must be non-negative and ",
                "non-decreasing, got offsets[", i, "] = ", b[i], " and offsets[", i + 1,
                "] = ", b[i + 1]);
  }
  TORCH_CHECK(b[n] <= data.numel(), op, ": offsets reach byte ", b[n], " of ", data.numel(),
              " bytes of data");
  const at::Tensor bytes = data.contiguous();
  at::Tensor ids = at::empty({n}, at::TensorOptions().dtype(at::kLong));
  const bool* v = valid.has_value() ? valid_bytes.data_ptr<bool>() : nullptr;
  const int64_t bad = parse_hex_strings(b, n, bytes.data_ptr<uint8_t>(), v, table_size,
                                        missing_id, ids.data_ptr<int64_t>());
  return {ids, bad};
}

}  // namespace

TORCH_LIBRARY_IMPL(recis, CPU, m) {
  m.impl("parse_criteo_lines", &parse_criteo_lines_cpu);
  m.impl("parse_hex_column", &parse_hex_column_cpu);
}

}  // namespace recis
