#include "cpu/table_memory.h"

#include <c10/util/accumulate.h>

#include <cstdlib>
#include <deque>
#include <limits>
#include <mutex>
#include <utility>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace recis {
namespace {

constexpr int64_t kHugePage = int64_t{2} << 20;

// Freed buffers kept for the next request of the same length. A collection allocates
// its pooled output every step, and a fresh mapping is faulted in and zeroed by the OS
// on first touch every step (about 4 ms for the 32 MiB output of 8 tables x dim 128 x
// 8192 samples). Bounded: buffers of up to kMaxReusedBytes each and kMaxCachedBytes in
// all are kept, the oldest dropped first; a table larger than that is freed at once.
constexpr int64_t kMaxReusedBytes = int64_t{256} << 20;
constexpr int64_t kMaxCachedBytes = int64_t{512} << 20;

class FreeBuffers {
 public:
  void* take(int64_t len) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = buffers_.begin(); it != buffers_.end(); ++it) {
      if (it->first == len) {
        void* p = it->second;
        bytes_ -= len;
        buffers_.erase(it);
        return p;
      }
    }
    return nullptr;
  }

  void give(void* p, int64_t len) {
    if (len > kMaxReusedBytes) return std::free(p);
    std::lock_guard<std::mutex> lock(mutex_);
    buffers_.emplace_back(len, p);
    bytes_ += len;
    while (bytes_ > kMaxCachedBytes) {
      bytes_ -= buffers_.front().first;
      std::free(buffers_.front().second);
      buffers_.pop_front();
    }
  }

  int64_t bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return bytes_;
  }

 private:
  std::mutex mutex_;
  std::deque<std::pair<int64_t, void*>> buffers_;  // (length, buffer), oldest first
  int64_t bytes_ = 0;
};

// Never destroyed: tensors freed during interpreter exit still return their buffers.
FreeBuffers& free_buffers() {
  static auto* buffers = new FreeBuffers();
  return *buffers;
}

}  // namespace

at::Tensor empty_table(at::IntArrayRef size, at::ScalarType dtype) {
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  for (const int64_t s : size) {
    TORCH_CHECK(s >= 0, "recis.empty_table: negative size in ", size);
  }
  const int64_t bytes =
      c10::multiply_integers(size) * static_cast<int64_t>(c10::elementSize(dtype));
  if (bytes < kHugePage) return at::empty(size, options);
  const int64_t len = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = free_buffers().take(len);
  if (p == nullptr) {
    TORCH_CHECK(posix_memalign(&p, kHugePage, static_cast<size_t>(len)) == 0,
                "recis.empty_table: cannot allocate ", len, " bytes for a ", size, " ", dtype,
                " table");
#if defined(MADV_HUGEPAGE)
    madvise(p, static_cast<size_t>(len), MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  }
  return at::from_blob(p, size, [len](void* q) { free_buffers().give(q, len); }, options);
}

int64_t table_memory_cached_bytes() { return free_buffers().bytes(); }

bool keep_freed_host_memory(int64_t trim_threshold_bytes) {
  TORCH_CHECK(trim_threshold_bytes > 0 &&
                  trim_threshold_bytes <= std::numeric_limits<int>::max(),
              "recis.keep_freed_host_memory: trim_threshold_bytes must be in [1, 2^31 - 1], got ",
              trim_threshold_bytes);
#if defined(__GLIBC__)
  // glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): larger
  // blocks are mapped and unmapped per request whatever is set here.
  constexpr int kMmapThreshold = 32 << 20;
  return mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 &&
         mallopt(M_TRIM_THRESHOLD, static_cast<int>(trim_threshold_bytes)) == 1;
#else
  return false;
#endif
}

}  // namespace recis
