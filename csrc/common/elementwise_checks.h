// Argument checks of the quantized elementwise ops, shared by the CPU and CUDA adapters.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>

namespace torchquant {

// One tensor's per-tensor qparams. On the CPU, the values are read and checked (scale > 0 and
// finite, zero point inside [qmin, qmax] of the tensor's dtype); on a device they stay there
// (scale float32 [1], zero_point int32 [1]) and the kernel clamps the zero point.
struct EwQParams {
  float scale = 1.0f;
  int32_t zero_point = 0;
  at::Tensor scale_t, zero_point_t;
};

// The (qmin, qmax) of an int8 or uint8 dtype.
std::pair<int32_t, int32_t> full_range(at::ScalarType dtype);

// Checks `scale` / `zero_point` (one element each, on ref's device) for a tensor of `dtype`;
// error messages name the arguments as given (`scale_name`, `zp_name`).
EwQParams ew_qparams(const at::Tensor& ref, const char* ref_name, const at::Tensor& scale,
                     const std::string& scale_name, const at::Tensor& zero_point,
                     const std::string& zp_name, at::ScalarType dtype);

// out_dtype, defaulting to `fallback`: int8 or uint8.
at::ScalarType ew_out_dtype(std::optional<at::ScalarType> out_dtype, at::ScalarType fallback);

}  // namespace torchquant
