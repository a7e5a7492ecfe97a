// Per-thread scratch buffers shared by the CPU kernels (raw pointers only, no torch headers:
// the SIMD files include it).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace torchquant {
namespace cpu {

// Per-thread scratch reused across calls: `v` resized to n elements. Memory kept from an
// earlier, much larger call (over 4 MiB and more than twice what this call needs) is released
// first. A thread keeps what its largest call needed until its next call of the same kernel;
// CallScratch bounds that for the buffers sized by the caller's input.
template <class T>
inline T* scratch(std::vector<T>& v, size_t n) {
  if (v.capacity() * sizeof(T) > (size_t{4} << 20) && v.capacity() > 2 * n) std::vector<T>().swap(v);
  v.resize(n);
  return v.data();
}

// Scratch of n elements for one call: the thread's reusable `v` up to 64 MiB, above that a
// buffer of the call's own (not initialized), freed when the call returns, so that one huge
// batch does not pin its memory for the life of the thread (an allocation that large costs
// little against the work that needed it).
template <class T>
class CallScratch {
 public:
  static constexpr size_t kKeepBytes = size_t{64} << 20;
  CallScratch(std::vector<T>& v, size_t n) {
    if (n * sizeof(T) > kKeepBytes) {
      if (v.capacity() * sizeof(T) > (size_t{4} << 20)) std::vector<T>().swap(v);
      own_.reset(new T[n]);
      p_ = own_.get();
    } else {
      p_ = scratch(v, n);
    }
  }
  T* data() const { return p_; }

 private:
  std::unique_ptr<T[]> own_;
  T* p_;
};

}  // namespace cpu
}  // namespace torchquant
