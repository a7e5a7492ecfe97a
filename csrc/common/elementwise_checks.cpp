#include "common/elementwise_checks.h"

#include <ATen/ATen.h>

#include "common/checks.h"

namespace torchquant {

std::pair<int32_t, int32_t> full_range(at::ScalarType dtype) {
  return dtype == at::kByte ? std::make_pair(0, 255) : std::make_pair(-128, 127);
}

EwQParams ew_qparams(const at::Tensor& ref, const char* ref_name, const at::Tensor& scale,
                     const std::string& scale_name, const at::Tensor& zero_point,
                     const std::string& zp_name, at::ScalarType dtype) {
  TORCH_CHECK(scale.defined(), "argument '", scale_name, "' must be a tensor, got None");
  TORCH_CHECK(zero_point.defined(), "argument '", zp_name, "' must be a tensor, got None");
  TORCH_CHECK(at::isFloatingType(scale.scalar_type()), "argument '", scale_name,
              "' must be a floating-point tensor, got dtype ", scale.scalar_type());
  TORCH_CHECK(at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false), "argument '",
              zp_name, "' must be an integer tensor, got dtype ", zero_point.scalar_type());
  TORCH_CHECK(scale.numel() == 1, "argument '", scale_name,
              "' must have 1 element (per-tensor quantization), got ", scale.numel());
  TORCH_CHECK(zero_point.numel() == 1, "argument '", zp_name,
              "' must have 1 element (per-tensor quantization), got ", zero_point.numel());
  check_same_device(ref, ref_name, scale, scale_name.c_str());
  check_same_device(ref, ref_name, zero_point, zp_name.c_str());
  EwQParams p;
  if (ref.device().is_cpu() && scale.scalar_type() == at::kFloat &&
      (zero_point.scalar_type() == at::kInt || zero_point.scalar_type() == at::kLong)) {
    // The usual case (a QTensor's float32 / int32 qparams): read in place, no tensor made; at
    // small sizes those conversions cost more than the op.
    p.scale = *scale.const_data_ptr<float>();
    check_scale_values(scale, &p.scale, 1, scale_name.c_str(), nullptr);
    const int64_t z = zero_point.scalar_type() == at::kInt ? int64_t{*zero_point.const_data_ptr<int32_t>()}
                                                           : *zero_point.const_data_ptr<int64_t>();
    const auto r = full_range(dtype);
    TORCH_CHECK(z >= r.first && z <= r.second, "argument '", zp_name, "' must lie in [", r.first,
                ", ", r.second, "] for ", dtype, ", got ", z);
    p.zero_point = static_cast<int32_t>(z);
    return p;
  }
  p.scale_t = scale.reshape({1}).to(at::kFloat).contiguous();
  if (!ref.device().is_cpu()) {
    p.zero_point_t = zero_point_int32(zero_point.reshape({1})).contiguous();
    return p;
  }
  p.scale = p.scale_t.data_ptr<float>()[0];
  check_scale_values(scale, &p.scale, 1, scale_name.c_str(), nullptr);
  const int64_t z = zero_point.reshape({1}).to(at::kLong).data_ptr<int64_t>()[0];
  const auto r = full_range(dtype);
  TORCH_CHECK(z >= r.first && z <= r.second, "argument '", zp_name, "' must lie in [", r.first,
              ", ", r.second, "] for ", dtype, ", got ", z);
  p.zero_point = static_cast<int32_t>(z);
  return p;
}

at::ScalarType ew_out_dtype(std::optional<at::ScalarType> out_dtype, at::ScalarType fallback) {
  const at::ScalarType odt = out_dtype.value_or(fallback);
  TORCH_CHECK(odt == at::kChar || odt == at::kByte,
              "argument 'out_dtype' must be torch.int8 or torch.uint8, got ", odt);
  return odt;
}

at::Tensor ew_binary_output(const at::Tensor& a, const at::Tensor& b, at::ScalarType odt) {
  const std::vector<int64_t> shape = at::infer_size(a.sizes(), b.sizes());
  const at::IntArrayRef sh(shape);
  const at::Tensor* like = a.sizes() == sh ? &a : (b.sizes() == sh ? &b : nullptr);
  return like != nullptr ? at::empty_like(*like, a.options().dtype(odt)) : at::empty(shape, a.options().dtype(odt));
}

EwBinaryArgs ew_binary_args(const at::Tensor& a, const at::Tensor& a_scale,
                            const at::Tensor& a_zero_point, const at::Tensor& b,
                            const at::Tensor& b_scale, const at::Tensor& b_zero_point,
                            const at::Tensor& out_scale, const at::Tensor& out_zero_point,
                            std::optional<at::ScalarType> out_dtype) {
  check_int8_input(a, "a");
  check_int8_input(b, "b");
  check_same_device(a, "a", b, "b");
  EwBinaryArgs r;
  r.odt = ew_out_dtype(out_dtype, a.scalar_type());
  r.a = ew_qparams(a, "a", a_scale, "a_scale", a_zero_point, "a_zero_point", a.scalar_type());
  r.b = ew_qparams(a, "a", b_scale, "b_scale", b_zero_point, "b_zero_point", b.scalar_type());
  r.out = ew_qparams(a, "a", out_scale, "out_scale", out_zero_point, "out_zero_point", r.odt);
  return r;
}

EwScalarArgs ew_scalar_args(const at::Tensor& a, const at::Tensor& a_scale,
                            const at::Tensor& a_zero_point, const at::Tensor& out_scale,
                            const at::Tensor& out_zero_point,
                            std::optional<at::ScalarType> out_dtype) {
  check_int8_input(a, "a");
  EwScalarArgs r;
  r.odt = ew_out_dtype(out_dtype, a.scalar_type());
  r.a = ew_qparams(a, "a", a_scale, "a_scale", a_zero_point, "a_zero_point", a.scalar_type());
  r.out = ew_qparams(a, "a", out_scale, "out_scale", out_zero_point, "out_zero_point", r.odt);
  return r;
}

EwCatArgs ew_cat_args(at::TensorList tensors, at::TensorList scales, at::TensorList zero_points,
                      const at::Tensor& out_scale, const at::Tensor& out_zero_point,
                      std::optional<at::ScalarType> out_dtype) {
  TORCH_CHECK(!tensors.empty(), "argument 'tensors' must hold at least one tensor, got none");
  TORCH_CHECK(scales.size() == tensors.size() && zero_points.size() == tensors.size(),
              "arguments 'scales' and 'zero_points' must hold one tensor per input (",
              tensors.size(), "), got ", scales.size(), " and ", zero_points.size());
  const at::Tensor& first = tensors[0];
  check_int8_input(first, "tensors[0]");
  EwCatArgs r;
  r.odt = ew_out_dtype(out_dtype, first.scalar_type());
  r.out = ew_qparams(first, "tensors[0]", out_scale, "out_scale", out_zero_point, "out_zero_point",
                     r.odt);
  r.in.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string name = "tensors[" + std::to_string(i) + "]";
    const at::Tensor& x = tensors[i];
    check_int8_input(x, name.c_str());
    check_same_device(first, "tensors[0]", x, name.c_str());
    r.in.push_back(ew_qparams(x, name.c_str(), scales[i], "scales[" + std::to_string(i) + "]",
                              zero_points[i], "zero_points[" + std::to_string(i) + "]",
                              x.scalar_type()));
  }
  return r;
}

void check_lookup_table_args(const at::Tensor& a, const at::Tensor& table) {
  check_int8_input(a, "a");
  TORCH_CHECK(table.defined(), "argument 'table' must be a tensor, got None");
  TORCH_CHECK(table.scalar_type() == at::kChar || table.scalar_type() == at::kByte,
              "argument 'table' must be an int8 or uint8 tensor, got dtype ", table.scalar_type());
  TORCH_CHECK(table.dim() == 1 && table.numel() == 256,
              "argument 'table' must be 1-D with 256 elements (one per code), got shape ", table.sizes());
  check_same_device(a, "a", table, "table");
}

}  // namespace torchquant
