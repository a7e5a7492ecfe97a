#include "common/checks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <limits>
#include <sstream>

namespace torchquant {

void check_float_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.defined(), "argument '", name, "' must be a tensor, got None");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "argument '", name,
              "' must be a floating-point tensor, got dtype ", x.scalar_type());
}

void check_int8_input(const at::Tensor& q, const char* name) {
  TORCH_CHECK(q.defined(), "argument '", name, "' must be a tensor, got None");
  TORCH_CHECK(q.scalar_type() == at::kChar || q.scalar_type() == at::kByte, "argument '", name,
              "' must be an int8 or uint8 tensor, got dtype ", q.scalar_type());
}

void check_qrange(int64_t qmin, int64_t qmax, at::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kChar || dtype == at::kByte,
              "argument 'dtype' must be torch.int8 or torch.uint8, got ", dtype);
  const int64_t lo = dtype == at::kChar ? -128 : 0, hi = dtype == at::kChar ? 127 : 255;
  TORCH_CHECK(qmin >= lo && qmin <= hi, "argument 'qmin' must lie in [", lo, ", ", hi,
              "] for ", dtype, ", got ", qmin);
  TORCH_CHECK(qmax >= lo && qmax <= hi, "argument 'qmax' must lie in [", lo, ", ", hi,
              "] for ", dtype, ", got ", qmax);
  TORCH_CHECK(qmin < qmax, "argument 'qmin' must be < qmax, got qmin=", qmin, " qmax=", qmax);
}

void check_fake_qrange(int64_t qmin, int64_t qmax) {
  TORCH_CHECK(qmin < qmax, "argument 'qmin' must be < qmax, got qmin=", qmin, " qmax=", qmax);
  TORCH_CHECK(qmin >= -(1 << 23) && qmax <= (1 << 23),
              "arguments 'qmin'/'qmax' must lie in [-2^23, 2^23], got [", qmin, ", ", qmax, "]");
}

bool keeps_strides(const at::Tensor& x, int64_t axis) {
  return axis < 0 && x.numel() > 0 && !x.is_contiguous() && x.is_non_overlapping_and_dense();
}

bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

void check_grad_like(const at::Tensor& grad, const at::Tensor& x) {
  check_float_input(grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes(), "argument 'grad' must have the shape of x ", x.sizes(),
              ", got ", grad.sizes());
  check_same_device(x, "x", grad, "grad");
}

at::Tensor zero_point_int32(const at::Tensor& zero_point) {
  if (zero_point.scalar_type() == at::kInt) return zero_point;
  return zero_point.to(at::kLong)
      .clamp(std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max())
      .to(at::kInt);
}

void check_same_device(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                       const char* name) {
  TORCH_CHECK(t.device() == ref.device(), "argument '", name, "' is on ", t.device(),
              " but '", ref_name, "' is on ", ref.device(), "; they must be on the same device");
}

int64_t normalize_axis(std::optional<int64_t> axis, const at::Tensor& x, const char* x_name) {
  if (!axis.has_value()) return -1;
  const int64_t dim = x.dim();
  const int64_t a = *axis;
  TORCH_CHECK(dim > 0 && a >= -dim && a < dim, "argument 'axis' must lie in [", -dim, ", ",
              dim - 1, "] for '", x_name, "' with ", dim, " dimensions, got ", a);
  return a < 0 ? a + dim : a;
}

namespace {

// Element i of `t` as an error message shows it: the value given, and v (its float32 value)
// too where the conversion shows (0, inf, a rounded digit), not for every float64 value.
std::string scale_value(const at::Tensor& t, int64_t i, float v) {
  std::ostringstream os;
  os << v;
  if (t.scalar_type() == at::kFloat) return os.str();
  std::ostringstream given;
  given << t.detach().reshape({-1})[i].item<double>();
  return given.str() == os.str() ? os.str() : given.str() + " (" + os.str() + " in float32)";
}

}  // namespace

void check_scale_values(const at::Tensor& given, const float* v, int64_t n, const char* name,
                        const char* where) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(std::isfinite(v[i]) && v[i] > 0.0f, "argument '", name,
                "' must be > 0 and finite, got ", scale_value(given, i, v[i]),
                where != nullptr ? std::string(" at ") + where + " " + std::to_string(i) : std::string());
  }
}

QParams prepare_qparams(const at::Tensor& x, const char* x_name, const at::Tensor& scale,
                        const at::Tensor& zero_point, std::optional<int64_t> axis, int64_t qmin,
                        int64_t qmax, bool with_inv) {
  TORCH_CHECK(scale.defined(), "argument 'scale' must be a tensor, got None");
  TORCH_CHECK(zero_point.defined(), "argument 'zero_point' must be a tensor, got None");
  TORCH_CHECK(at::isFloatingType(scale.scalar_type()),
              "argument 'scale' must be a floating-point tensor, got dtype ", scale.scalar_type());
  TORCH_CHECK(at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false),
              "argument 'zero_point' must be an integer tensor, got dtype ",
              zero_point.scalar_type());
  check_same_device(x, x_name, scale, "scale");
  check_same_device(x, x_name, zero_point, "zero_point");
  QParams p;
  p.axis = normalize_axis(axis, x, x_name);
  const int64_t channels = p.axis < 0 ? 1 : x.size(p.axis);
  TORCH_CHECK(scale.numel() == channels, "argument 'scale' must have ", channels,
              p.axis < 0 ? " element (per tensor)" : " elements (one per channel of axis ",
              p.axis < 0 ? "" : std::to_string(p.axis), p.axis < 0 ? "" : ")", ", got ",
              scale.numel());
  TORCH_CHECK(zero_point.numel() == channels, "argument 'zero_point' must have ", channels,
              " element(s), got ", zero_point.numel());
  // Tensors that already have the kernel's form (the usual case: a module's float32 [1] or
  // [C] buffers) are used as they are. reshape / to / contiguous would return them unchanged
  // too, but each is a dispatcher call, and at batch 1 those calls cost more than the kernel.
  const bool s_ready = scale.scalar_type() == at::kFloat && scale.dim() == 1 && scale.is_contiguous();
  const bool z_ready = zero_point.scalar_type() == at::kInt && zero_point.dim() == 1 &&
                       zero_point.is_contiguous();
  p.scale = s_ready ? scale : scale.reshape({channels}).to(at::kFloat).contiguous();
  p.zero_point = z_ready ? zero_point : zero_point_int32(zero_point.reshape({channels})).contiguous();
  if (scale.device().is_cpu()) {
    const float* s = p.scale.data_ptr<float>();
    // Range-check the caller's values before any narrowing to int32 could wrap them (int32
    // zero points are read as they are: nothing was narrowed).
    at::Tensor z_orig;
    if (!z_ready) z_orig = zero_point.reshape({channels}).to(at::kLong).contiguous();
    const int64_t* z64 = z_ready ? nullptr : z_orig.data_ptr<int64_t>();
    const int32_t* z32 = z_ready ? p.zero_point.data_ptr<int32_t>() : nullptr;
    check_scale_values(scale, s, channels, "scale", channels > 1 ? "channel" : nullptr);
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t zc = z_ready ? int64_t{z32[c]} : z64[c];
      TORCH_CHECK(zc >= qmin && zc <= qmax, "argument 'zero_point' must lie in [", qmin, ", ",
                  qmax, "], got ", zc, channels > 1 ? " at channel " + std::to_string(c) : std::string());
    }
    // 1.0f / scale, correctly rounded in float32: what at::reciprocal computes, without its
    // dispatch; per tensor in QParams itself, without an allocation.
    if (with_inv && channels == 1) {
      p.inv_scale1 = 1.0f / s[0];
    } else if (with_inv) {
      p.inv_scale = at::empty({channels}, p.scale.options());
      float* inv = p.inv_scale.data_ptr<float>();
      for (int64_t c = 0; c < channels; ++c) inv[c] = 1.0f / s[c];
    }
  } else if (with_inv) {
    p.inv_scale = at::reciprocal(p.scale);  // 1.0f / scale, correctly rounded in float32
  }
  return p;
}

void check_k_bound(int64_t K, const char* name) {
  TORCH_CHECK(K <= kMaxK, "the inner dimension K of '", name, "' is ", K,
              ", past the largest K (", kMaxK,
              ") for which int32 accumulation of 8-bit products cannot overflow");
}

}  // namespace torchquant
