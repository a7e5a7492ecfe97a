// Ops built from ATen ops, registered once for every device (CompositeExplicitAutograd):
// they touch tiny tensors (qparams) or are off the hot path (learnable fake-quant gradients),
// so a hand-written kernel per device would add code without adding speed.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cfloat>
#include <cmath>
#include <limits>
#include <string>

#include "common/checks.h"
#include "ops.h"

namespace torchquant {
namespace {

// scale/zero_point reshaped to broadcast against x along axis (or scalars for per tensor).
at::Tensor broadcastable(const at::Tensor& t, const at::Tensor& x, int64_t axis) {
  if (axis < 0) return t.reshape({});
  std::vector<int64_t> shape(x.dim(), 1);
  shape[axis] = x.size(axis);
  return t.reshape(shape);
}

// Values can be read without a device sync: CPU tensors with data (not the FakeTensors that
// torch.compile traces with, which carry the Python dispatch key).
bool values_on_host(const at::Tensor& t) {
  return t.device().is_cpu() && !t.key_set().has(c10::DispatchKey::Python);
}

void check_learnable_args(const at::Tensor& x, const at::Tensor& scale,
                          const at::Tensor& zero_point, int64_t axis, int64_t qmin, int64_t qmax,
                          double grad_factor) {
  check_float_input(x, "x");
  check_float_input(scale, "scale");
  TORCH_CHECK(zero_point.defined(), "argument 'zero_point' must be a tensor, got None");
  // (a complex zero point lost its imaginary part with a C++ warning only; a bool or torch
  // quantized one was read as a number)
  const at::ScalarType zt = zero_point.scalar_type();
  TORCH_CHECK(at::isFloatingType(zt) || (at::isIntegralType(zt, /*includeBool=*/false)),
              "argument 'zero_point' must be a floating-point or integer tensor, got ", zt);
  check_same_device(x, "x", scale, "scale");
  check_same_device(x, "x", zero_point, "zero_point");
  check_fake_qrange(qmin, qmax);
  TORCH_CHECK(std::isfinite(grad_factor), "argument 'grad_factor' must be finite, got ", grad_factor);
  const int64_t channels = axis < 0 ? 1 : x.size(axis);
  TORCH_CHECK(scale.numel() == channels, "argument 'scale' must have ", channels,
              " element(s), got ", scale.numel());
  TORCH_CHECK(zero_point.numel() == channels, "argument 'zero_point' must have ", channels,
              " element(s), got ", zero_point.numel());
  // The forward's fake_quantize checks the scale too, but the backward divides by it, and a NaN
  // zero point would reach a float-to-int conversion. Checked on the CPU only, as
  // prepare_qparams does: elsewhere a check would cost a device sync.
  if (values_on_host(scale)) {
    const at::Tensor s = scale.detach().to(at::kFloat).contiguous();
    check_scale_values(scale, s.const_data_ptr<float>(), channels, "scale",
                       channels > 1 ? "channel" : nullptr);
  }
  if (values_on_host(zero_point) && at::isFloatingType(zero_point.scalar_type())) {
    const at::Tensor z = zero_point.detach().to(at::kFloat).contiguous();
    const float* pz = z.const_data_ptr<float>();
    for (int64_t c = 0; c < channels; ++c) {
      TORCH_CHECK(!std::isnan(pz[c]), "argument 'zero_point' must not be NaN, got ", pz[c],
                  channels > 1 ? " at channel " + std::to_string(c) : std::string());
    }
  }
}

// Sums of each row of a [C, R] tensor in one fixed order: float64, pairwise halving (element j
// plus element j + R/2, R padded to a power of two with zeros), each step an elementwise add.
// The same bits for any thread count, ISA and device (at::sum's float order follows how the
// work is split across threads).
at::Tensor fixed_order_row_sums(const at::Tensor& rows) {
  at::Tensor v = rows.to(at::kDouble);
  const int64_t r = v.size(1);
  if (r == 0) return at::zeros({v.size(0)}, v.options());
  int64_t p = 1;
  while (p < r) p <<= 1;
  if (p != r) v = at::constant_pad_nd(v, {0, p - r});
  while (v.size(1) > 1) {
    const int64_t h = v.size(1) / 2;
    v = v.narrow(1, 0, h) + v.narrow(1, h, h);
  }
  return v.select(1, 0);
}

at::Tensor rounded_zero_point(const at::Tensor& zero_point, int64_t qmin, int64_t qmax) {
  return zero_point.to(at::kFloat).round().clamp(qmin, qmax);
}

}  // namespace

at::Tensor fake_quantize_learnable(const at::Tensor& x, const at::Tensor& scale,
                                   const at::Tensor& zero_point, std::optional<int64_t> axis,
                                   int64_t qmin, int64_t qmax, double grad_factor) {
  const int64_t a = normalize_axis(axis, x, "x");
  check_learnable_args(x, scale, zero_point, a, qmin, qmax, grad_factor);  // grad_factor: backward
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchquant::fake_quantize", "")
                       .typed<decltype(fake_quantize_cpu)>();  // the op's signature
  return op.call(x, scale.detach(), rounded_zero_point(zero_point.detach(), qmin, qmax).to(at::kInt),
                 axis, qmin, qmax);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_learnable_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, std::optional<int64_t> axis, int64_t qmin, int64_t qmax,
    double grad_factor) {
  const int64_t a = normalize_axis(axis, x, "x");
  check_learnable_args(x, scale, zero_point, a, qmin, qmax, grad_factor);
  check_grad_like(grad, x);
  const at::Tensor xf = x.to(at::kFloat), g = grad.to(at::kFloat);
  const at::Tensor s = broadcastable(scale.to(at::kFloat), xf, a);
  const at::Tensor zp = broadcastable(rounded_zero_point(zero_point, qmin, qmax), xf, a);
  const at::Tensor inv = at::reciprocal(s);
  // The same rounding as the forward: nearbyint(x * inv_scale) + zero_point.
  const at::Tensor t = at::round(xf * inv) + zp;
  const at::Tensor below = t < qmin, above = t > qmax;
  // A NaN element (NaN x) is neither: it gets no gradient, as in fake_quantize_backward, and
  // adds nothing to the qparams' (it made both NaN).
  const at::Tensor nan = at::isnan(t);
  const at::Tensor inside = at::logical_not(at::logical_or(at::logical_or(below, above), nan));
  // where, not g * inside: a negative grad outside the range gives +0, as fake_quantize_backward.
  const at::Tensor zeros = at::zeros_like(xf);
  const at::Tensor gx = at::where(inside, g, zeros);
  const at::Tensor xfq = (t.clamp(qmin, qmax) - zp) * s;
  const float gf = static_cast<float>(grad_factor);
  // d(fake)/d(scale): (xfq - x) / scale inside the range, (q_limit - zp) outside (LSQ).
  const at::Tensor ds_el = at::where(
      nan, zeros, at::where(inside, (xfq - xf) * inv, at::where(below, qmin - zp, qmax - zp)) * g * gf);
  // d(fake)/d(zero_point): 0 inside, -scale outside.
  const at::Tensor dz_el = at::where(nan, zeros, at::where(inside, zeros, -s * at::ones_like(xf)) * g * gf);
  // Reduced over everything but the channel axis in a fixed order (float64), then rounded once
  // to the qparams' dtype: the same gradient for any number of threads.
  auto rows = [&](const at::Tensor& el) {
    return a < 0 ? el.reshape({1, -1}) : el.movedim(a, 0).reshape({el.size(a), -1});
  };
  const at::Tensor ds = fixed_order_row_sums(rows(ds_el)), dz = fixed_order_row_sums(rows(dz_el));
  return {gx.to(x.scalar_type()), ds.reshape(scale.sizes()).to(scale.scalar_type()),
          dz.reshape(zero_point.sizes()).to(zero_point.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> choose_qparams(const at::Tensor& min_val,
                                                  const at::Tensor& max_val, int64_t qmin,
                                                  int64_t qmax, bool symmetric, double eps,
                                                  int64_t symmetric_zero_point) {
  check_float_input(min_val, "min_val");
  check_float_input(max_val, "max_val");
  check_same_device(min_val, "min_val", max_val, "max_val");
  TORCH_CHECK(min_val.sizes() == max_val.sizes(), "arguments 'min_val' ", min_val.sizes(),
              " and 'max_val' ", max_val.sizes(), " must have the same shape");
  TORCH_CHECK(qmin < qmax, "argument 'qmin' must be < qmax, got qmin=", qmin, " qmax=", qmax);
  // The zero point is int32; past that range the int32 tensor arithmetic below would wrap.
  TORCH_CHECK(qmin >= std::numeric_limits<int32_t>::min() && qmax <= std::numeric_limits<int32_t>::max(),
              "arguments 'qmin'/'qmax' must lie in [-2^31, 2^31 - 1] (zero points are int32), got [",
              qmin, ", ", qmax, "]");
  // eps becomes a float32 tensor: a larger one would be +inf, one below half the smallest
  // float32 subnormal 0 (a zero scale).
  TORCH_CHECK(eps > 0 && eps <= FLT_MAX && static_cast<float>(eps) > 0.0f,
              "argument 'eps' must be > 0 and finite in float32, got ", eps,
              static_cast<float>(eps) == 0.0f && eps > 0 ? " (0 in float32)" : "");
  TORCH_CHECK(!symmetric || (symmetric_zero_point >= qmin && symmetric_zero_point <= qmax),
              "argument 'symmetric_zero_point' must lie in [", qmin, ", ", qmax, "], got ",
              symmetric_zero_point);
  // Non-finite statistics never reach the formulas: NaN counts as 0, +-Inf as +-FLT_MAX.
  const at::Tensor lo = at::nan_to_num(min_val.to(at::kFloat), 0.0, FLT_MAX, -FLT_MAX);
  const at::Tensor hi = at::nan_to_num(max_val.to(at::kFloat), 0.0, FLT_MAX, -FLT_MAX);
  // torch.ao's _calculate_qparams, op for op, so the results are bit-identical with it. The
  // divisors are tensors, not scalars: ATen's CUDA division by a host scalar multiplies by its
  // reciprocal (one rounding more), which would give other scales than the CPU.
  const at::Tensor zero = at::zeros_like(lo);
  const at::Tensor min_neg = at::minimum(lo, zero);
  at::Tensor max_pos = at::maximum(hi, zero);
  const at::Tensor eps_t = at::full({}, eps, lo.options());
  at::Tensor scale, zp;
  if (symmetric) {
    max_pos = at::maximum(-min_neg, max_pos);
    scale = at::maximum(max_pos / at::full_like(max_pos, static_cast<double>(qmax - qmin) / 2), eps_t);
    scale = at::nan_to_num(scale, eps, FLT_MAX, eps);
    zp = at::full(lo.sizes(), symmetric_zero_point, lo.options().dtype(at::kInt));
  } else {
    scale = at::maximum((max_pos - min_neg) / at::full_like(max_pos, static_cast<double>(qmax - qmin)), eps_t);
    scale = at::nan_to_num(scale, eps, FLT_MAX, eps);
    // |min_neg / scale| <= qmax - qmin (up to rounding), which is below 2^33 but not below
    // 2^31 for ranges wider than int32's half: the integer steps are made in int64, where
    // neither the conversion nor qmin - q can wrap; the clamp brings the result into int32.
    // Where int32 does not wrap (every 8- and 16-bit range) this is torch.ao's value.
    zp = (qmin - at::round(min_neg / scale).to(at::kLong)).clamp(qmin, qmax).to(at::kInt);
  }
  return {scale, zp};
}

TORCH_LIBRARY_IMPL(torchquant, CompositeExplicitAutograd, m) {
  m.impl("fake_quantize_learnable", &fake_quantize_learnable);
  m.impl("fake_quantize_learnable_backward", &fake_quantize_learnable_backward);
  m.impl("choose_qparams", &choose_qparams);
  // Other devices than the CPU (cpu/alloc.cpp): a plain contiguous copy.
  m.impl("streamed_copy", [](const at::Tensor& x) { return x.clone(at::MemoryFormat::Contiguous); });
}

}  // namespace torchquant
