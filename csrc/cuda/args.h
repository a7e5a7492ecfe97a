// Host-side readers of the CUDA ops' arguments, shared so that every op rejects the same input
// with the same message: the output dtype as the epilogue's OutKind, and the qparam tensors
// checked (dtype, element count, device) and converted to contiguous float32 / int32.
#pragma once

#include <ATen/core/Tensor.h>

#include "cuda/gemm.cuh"

namespace torchquant {
namespace cuda {

// float32 / bfloat16 / float16 / int8 / uint8; any other dtype raises, naming 'out_dtype'.
OutKind out_kind(at::ScalarType odt);

// A per-tensor qparam: one element, floating (-> float32 [1]) or integer (-> int32 [1]), on x's
// device.
at::Tensor one_element(const at::Tensor& t, const char* name, bool floating, const at::Tensor& x);

// A per-output-channel float tensor of n elements (-> float32 [n]) on x's device.
at::Tensor per_channel(const at::Tensor& t, const char* name, int64_t n, const at::Tensor& x);

}  // namespace cuda
}  // namespace torchquant
