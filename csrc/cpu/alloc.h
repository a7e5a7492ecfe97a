// Output allocation for the memory-bound CPU ops.
#pragma once

#include <ATen/ATen.h>

namespace torchquant {
namespace cpu {

// at::empty, and for outputs of at least 4 MiB a request (madvise MADV_HUGEPAGE) that the
// kernel back the 2 MiB-aligned interior of the fresh allocation with transparent huge pages.
// A large output is freshly mapped memory, and with 4 KiB pages the page faults of its first
// touch cost more than the op itself (docs/benchmarks.md, quantize ops). The advice is what
// torch's own THP_MEM_ALLOC_ENABLE=1 gives every large allocation; here it is given only to
// the outputs torchquant writes. TORCHQUANT_HUGEPAGES=0 turns it off; on systems where
// transparent huge pages are "never", or off Linux, it does nothing.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);
// The same with the given strides (a dense layout: an elementwise op's output in its input's).
at::Tensor empty_output(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options);

// A CPU tensor for long-lived data a kernel streams from memory (packed weights): a fresh
// anonymous mapping at a 2 MiB-aligned address, advised MADV_HUGEPAGE before its first touch, so
// every whole 2 MiB of it can be a huge page (at::empty's memory may be reused heap pages,
// already backed by 4 KiB ones, and starts at an arbitrary offset). Zero-filled. Below 2 MiB,
// with TORCHQUANT_HUGEPAGES=0, or off Linux: at::zeros.
at::Tensor zeros_streamed(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace cpu
}  // namespace torchquant
