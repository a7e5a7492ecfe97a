#include "cuda/args.h"

#include <ATen/ATen.h>

#include "common/checks.h"

namespace torchquant {
namespace cuda {

OutKind out_kind(at::ScalarType odt) {
  switch (odt) {
    case at::kFloat: return OutKind::Float;
    case at::kBFloat16: return OutKind::BFloat16;
    case at::kHalf: return OutKind::Half;
    case at::kChar: return OutKind::Int8;
    case at::kByte: return OutKind::UInt8;
    default:
      TORCH_CHECK(false, "argument 'out_dtype' must be torch.float32, torch.bfloat16, torch.float16, "
                  "torch.int8 or torch.uint8, got ", odt);
  }
  return OutKind::Float;
}

at::Tensor one_element(const at::Tensor& t, const char* name, bool floating, const at::Tensor& x) {
  TORCH_CHECK(t.defined(), "argument '", name, "' must be a tensor, got None");
  if (floating) {
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), "argument '", name,
                "' must be a floating-point tensor, got dtype ", t.scalar_type());
  } else {
    TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), "argument '", name,
                "' must be an integer tensor, got dtype ", t.scalar_type());
  }
  TORCH_CHECK(t.numel() == 1, "argument '", name, "' must have one element (per tensor), got ",
              t.numel());
  check_same_device(x, "x", t, name);
  // (an integer zero point saturated into int32, not wrapped: the kernels clamp it to their codes)
  return floating ? t.reshape({1}).to(at::kFloat).contiguous() : zero_point_int32(t.reshape({1})).contiguous();
}

at::Tensor per_channel(const at::Tensor& t, const char* name, int64_t n, const at::Tensor& x) {
  TORCH_CHECK(t.defined(), "argument '", name, "' must be a tensor, got None");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "argument '", name,
              "' must be a floating-point tensor, got dtype ", t.scalar_type());
  TORCH_CHECK(t.numel() == n, "argument '", name, "' must have ", n,
              " elements (one per output channel), got ", t.numel());
  check_same_device(x, "x", t, name);
  return t.reshape({n}).to(at::kFloat).contiguous();
}

ChannelQParams channel_qparams(const at::Tensor& x, const at::Tensor& x_scale,
                               const at::Tensor& x_zero_point, const at::Tensor& w_scale,
                               const std::optional<at::Tensor>& bias, int64_t n,
                               const std::optional<at::Tensor>& out_scale,
                               const std::optional<at::Tensor>& out_zero_point,
                               std::optional<at::ScalarType> out_dtype) {
  ChannelQParams q;
  q.odt = out_dtype.value_or(at::kFloat);
  q.kind = out_kind(q.odt);
  const bool quant_out = q.kind == OutKind::Int8 || q.kind == OutKind::UInt8;
  q.xs = one_element(x_scale, "x_scale", true, x);
  q.xz = one_element(x_zero_point, "x_zero_point", false, x);
  q.ws = per_channel(w_scale, "w_scale", n, x);
  if (bias.has_value() && bias->defined()) q.b = per_channel(*bias, "bias", n, x);
  if (quant_out) {
    TORCH_CHECK(out_scale.has_value() && out_scale->defined(),
                "argument 'out_scale' is required when out_dtype is ", q.odt);
    TORCH_CHECK(out_zero_point.has_value() && out_zero_point->defined(),
                "argument 'out_zero_point' is required when out_dtype is ", q.odt);
    q.os = one_element(*out_scale, "out_scale", true, x);
    q.ozp = one_element(*out_zero_point, "out_zero_point", false, x);
  }
  return q;
}

Epilogue ChannelQParams::epilogue(const at::Tensor& out, int64_t ldo, bool relu) const {
  Epilogue e;
  e.kind = kind;
  e.out = out.data_ptr();
  e.ldo = ldo;
  e.zp_shift = 0;
  e.x_scale = xs.data_ptr<float>();
  e.w_scale = ws.data_ptr<float>();
  e.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  e.relu = relu;
  if (os.defined()) {
    e.out_scale = os.data_ptr<float>();
    e.out_zp = ozp.data_ptr<int32_t>();
  }
  return e;
}

}  // namespace cuda
}  // namespace torchquant
