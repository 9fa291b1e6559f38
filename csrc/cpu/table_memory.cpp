#include "cpu/table_memory.h"

#include <c10/util/accumulate.h>

#include <cstdlib>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace recis {

at::Tensor empty_table(at::IntArrayRef size, at::ScalarType dtype) {
  constexpr int64_t kHugePage = int64_t{2} << 20;
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  for (const int64_t s : size) {
    TORCH_CHECK(s >= 0, "recis.empty_table: negative size in ", size);
  }
  const int64_t bytes = c10::multiply_integers(size) * static_cast<int64_t>(c10::elementSize(dtype));
  if (bytes < kHugePage) return at::empty(size, options);
  const int64_t len = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = nullptr;
  TORCH_CHECK(posix_memalign(&p, kHugePage, static_cast<size_t>(len)) == 0,
              "recis.empty_table: cannot allocate ", len, " bytes for a ", size, " ", dtype,
              " table");
#if defined(MADV_HUGEPAGE)
  madvise(p, static_cast<size_t>(len), MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return at::from_blob(p, size, [](void* q) { std::free(q); }, options);
}

}  // namespace recis
