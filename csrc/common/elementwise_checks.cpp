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
    p.zero_point_t = zero_point.reshape({1}).to(at::kInt).contiguous();
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

}  // namespace torchquant
