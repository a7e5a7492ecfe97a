#include "cpu/alloc.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace torchquant {
namespace cpu {
namespace {

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
constexpr size_t kMinBytes = size_t{4} << 20;

bool hugepages_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("TORCHQUANT_HUGEPAGES");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return on;
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t bytes = out.nbytes();
  if (bytes >= kMinBytes && out.device().is_cpu() && hugepages_enabled()) {
    const auto begin = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t lo = (begin + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t hi = (begin + bytes) & ~(kHugePage - 1);
    // Advice only: a failure (e.g. EINVAL where THP is compiled out) leaves ordinary pages.
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
#endif
  return out;
}

}  // namespace cpu
}  // namespace torchquant
