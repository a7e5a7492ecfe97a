// Host-side readers of the CUDA ops' arguments, shared so that every op rejects the same input
// with the same message: the output dtype as the epilogue's OutKind, and the qparam tensors
// checked (dtype, element count, device) and converted to contiguous float32 / int32.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

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

// The qparams of an op with one output channel per column (the convolutions): x_scale and
// x_zero_point of one element, w_scale and the optional bias of n, out_scale and out_zero_point
// required when out_dtype (float32 by default) is int8 / uint8; read as float32 / int32 on x's
// device.
struct ChannelQParams {
  at::ScalarType odt = at::kFloat;
  OutKind kind = OutKind::Float;
  at::Tensor xs, xz, ws;
  at::Tensor b, os, ozp;  // undefined when absent
  // An Epilogue writing `out` (rows of ldo elements) with these qparams; the zero-point
  // correction (col_sums, x_zp and its clamp) is the caller's to set.
  Epilogue epilogue(const at::Tensor& out, int64_t ldo, bool relu) const;
};

ChannelQParams channel_qparams(const at::Tensor& x, const at::Tensor& x_scale,
                               const at::Tensor& x_zero_point, const at::Tensor& w_scale,
                               const std::optional<at::Tensor>& bias, int64_t n,
                               const std::optional<at::Tensor>& out_scale,
                               const std::optional<at::Tensor>& out_zero_point,
                               std::optional<at::ScalarType> out_dtype);

}  // namespace cuda
}  // namespace torchquant
