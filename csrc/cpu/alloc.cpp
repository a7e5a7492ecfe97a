#include "cpu/alloc.h"

#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <cctype>
#include <cstring>
#include <string>

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
    // Off for 0 / off / false / no (any case, spaces around), as TORCHQUANT_FASTCALL.
    const char* v = std::getenv("TORCHQUANT_HUGEPAGES");
    if (v == nullptr) return true;
    std::string s(v);
    const auto first = s.find_first_not_of(" \t"), last = s.find_last_not_of(" \t");
    s = first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return !(s == "0" || s == "off" || s == "false" || s == "no");
  }();
  return on;
}

void advise_huge(const at::Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t bytes = out.nbytes();
  if (bytes >= kMinBytes && out.device().is_cpu() && hugepages_enabled()) {
    const auto begin = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t lo = (begin + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t hi = (begin + bytes) & ~(kHugePage - 1);
    // Advice only: a failure (e.g. EINVAL where THP is compiled out) leaves ordinary pages.
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
#else
  (void)out;
#endif
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  advise_huge(out);
  return out;
}

at::Tensor empty_output(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options) {
  at::Tensor out = at::empty_strided(sizes, strides, options);
  advise_huge(out);
  return out;
}

at::Tensor zeros_streamed(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  int64_t numel = 1;
  for (const int64_t d : sizes) numel *= d;
  const size_t bytes = static_cast<size_t>(numel) * at::elementSize(at::typeMetaToScalarType(options.dtype()));
  if (options.device().is_cpu() && bytes >= kHugePage && hugepages_enabled()) {
    // Over-map by 2 MiB, then unmap the unaligned head and the excess tail.
    const size_t span = bytes + kHugePage;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw != MAP_FAILED) {
      const auto begin = reinterpret_cast<uintptr_t>(raw);
      const uintptr_t lo = (begin + kHugePage - 1) & ~(kHugePage - 1);
      const size_t page = 4096;
      const size_t len = (bytes + page - 1) & ~(page - 1);
      if (lo > begin) munmap(raw, lo - begin);
      if (begin + span > lo + len) munmap(reinterpret_cast<void*>(lo + len), begin + span - (lo + len));
      void* p = reinterpret_cast<void*>(lo);
      madvise(p, len, MADV_HUGEPAGE);  // advice only: ordinary pages where it is refused
      // Anonymous mappings read as zeros.
      return at::from_blob(p, sizes, [len](void* q) { munmap(q, len); }, options);
    }
  }
#endif
  return at::zeros(sizes, options);
}

}  // namespace cpu

namespace {

at::Tensor streamed_copy_cpu(const at::Tensor& x) {
  at::Tensor out = cpu::zeros_streamed(x.sizes(), x.options());
  out.copy_(x);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchquant, CPU, m) { m.impl("streamed_copy", &streamed_copy_cpu); }

}  // namespace torchquant
