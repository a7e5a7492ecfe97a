// Argument checks of the quantized elementwise ops, shared by the CPU and CUDA adapters.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <vector>

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

// The checked arguments of add / mul: a and b int8 / uint8 tensors on one device, the qparams
// of a, b and the output, out_dtype (a's dtype by default).
struct EwBinaryArgs {
  at::ScalarType odt;
  EwQParams a, b, out;
};
EwBinaryArgs ew_binary_args(const at::Tensor& a, const at::Tensor& a_scale,
                            const at::Tensor& a_zero_point, const at::Tensor& b,
                            const at::Tensor& b_scale, const at::Tensor& b_zero_point,
                            const at::Tensor& out_scale, const at::Tensor& out_zero_point,
                            std::optional<at::ScalarType> out_dtype);

// The output of add / mul on every device, laid out as the fake kernel's (_ew_binary_fake, which
// torch.compile trusts): empty_like of the operand that has the broadcast shape (a first), else
// contiguous.
at::Tensor ew_binary_output(const at::Tensor& a, const at::Tensor& b, at::ScalarType odt);

// The checked arguments of add_scalar / mul_scalar: a an int8 / uint8 tensor, the qparams of a
// and the output, out_dtype (a's dtype by default).
struct EwScalarArgs {
  at::ScalarType odt;
  EwQParams a, out;
};
EwScalarArgs ew_scalar_args(const at::Tensor& a, const at::Tensor& a_scale,
                            const at::Tensor& a_zero_point, const at::Tensor& out_scale,
                            const at::Tensor& out_zero_point,
                            std::optional<at::ScalarType> out_dtype);

// The checked arguments of cat: at least one tensor, one scale and zero point per tensor, each
// an int8 / uint8 tensor on tensors[0]'s device; the qparams of each input (in) and of the
// output, out_dtype (tensors[0]'s dtype by default).
struct EwCatArgs {
  at::ScalarType odt;
  EwQParams out;
  std::vector<EwQParams> in;
};
EwCatArgs ew_cat_args(at::TensorList tensors, at::TensorList scales, at::TensorList zero_points,
                      const at::Tensor& out_scale, const at::Tensor& out_zero_point,
                      std::optional<at::ScalarType> out_dtype);

// lookup_table's arguments: a int8 / uint8; table int8 / uint8, 1-D of 256 elements on a's device.
void check_lookup_table_args(const at::Tensor& a, const at::Tensor& table);

}  // namespace torchquant
