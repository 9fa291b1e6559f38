#pragma once
// Scratch<T>: a growable buffer that keeps its memory between calls.
//
// The CPU kernels' O(nnz) temporaries, freshly allocated per call, are fresh pages
// that the OS faults in and zeroes on every step (as costly as the update itself
// for small batches). Each thread keeps its own and reuses it; the memory is bounded
// by the largest batch seen, never by a table's size.
//
// The memory starts on a cache line. `new T[n]` of a large n returns an mmap'd block
// 16 bytes past a page start, so each 256-byte row of a packed gradient spanned 5
// cache lines instead of 4, and prefetch_row then left the fifth to a demand miss:
// aligned, the row-wise Adagrad and SGD steps at the kernels benchmark's shape (dim
// 64, 1 thread) took 0.92-0.96x the time (in-process A/B, session 12). With
// prefetch_row requesting every line a row spans, alignment alone gives 0.97-0.99x.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>

namespace recis {

template <typename T>
class Scratch {
  static_assert(std::is_trivially_default_constructible_v<T> &&
                std::is_trivially_destructible_v<T>);

 public:
  static constexpr std::align_val_t kAlignment{64};

  // Room for n elements, uninitialised (the previous contents when capacity suffices).
  T* resize(int64_t n) {
    if (n > capacity_) {
      data_.reset(static_cast<T*>(::operator new(static_cast<size_t>(n) * sizeof(T), kAlignment)));
      capacity_ = n;
    }
    return data_.get();
  }
  T* data() const { return data_.get(); }
  T& operator[](int64_t i) const { return data_[i]; }

 private:
  struct Free {
    void operator()(T* p) const { ::operator delete(p, kAlignment); }
  };
  std::unique_ptr<T[], Free> data_;
  int64_t capacity_ = 0;
};

}  // namespace recis
