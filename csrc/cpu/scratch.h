// Per-thread scratch buffers shared by the CPU kernels (raw pointers only, no torch headers:
// the SIMD files include it).
#pragma once

#include <cstddef>
#include <vector>

namespace torchquant {
namespace cpu {

// Per-thread scratch reused across calls: `v` resized to n elements. Memory kept from an
// earlier, much larger call (over 4 MiB and more than twice what this call needs) is released
// first, so one huge call does not pin its scratch for the life of the thread.
template <class T>
inline T* scratch(std::vector<T>& v, size_t n) {
  if (v.capacity() * sizeof(T) > (size_t{4} << 20) && v.capacity() > 2 * n) std::vector<T>().swap(v);
  v.resize(n);
  return v.data();
}

}  // namespace cpu
}  // namespace torchquant
