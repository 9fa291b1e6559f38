#pragma once
// Scratch<T>: a growable buffer that keeps its memory between calls.
//
// The CPU kernels' O(nnz) temporaries, freshly allocated per call, are fresh pages
// that the OS faults in and zeroes on every step (as costly as the update itself
// for small batches). Each thread keeps its own and reuses it; the memory is bounded
// by the largest batch seen, never by a table's size.
#include <cstdint>
#include <memory>

namespace recis {

template <typename T>
class Scratch {
 public:
  // Room for n elements, uninitialised (the previous contents when capacity suffices).
  T* resize(int64_t n) {
    if (n > capacity_) {
      data_.reset(new T[static_cast<size_t>(n)]);
      capacity_ = n;
    }
    return data_.get();
  }
  T* data() const { return data_.get(); }
  T& operator[](int64_t i) const { return data_[i]; }

 private:
  std::unique_ptr<T[]> data_;
  int64_t capacity_ = 0;
};

}  // namespace recis
