// CPU adapters for quantize / dequantize / fake_quantize: argument checks, layout, threads,
// and the choice of kernel variant. The kernels themselves are raw-pointer loops in
// quantize_scalar.cpp and quantize_avx2.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "cpu/alloc.h"
#include "cpu/isa.h"
#include "cpu/quantize_kernels.h"
#include "ops.h"

namespace torchquant {
namespace {

constexpr int64_t kGrain = 32768;  // elements per task: large enough to amortize a thread wake-up

struct Kernels {
  decltype(&cpu::quantize_pt__scalar) quantize_pt;
  decltype(&cpu::quantize_pc__scalar) quantize_pc;
  decltype(&cpu::dequantize_pt__scalar) dequantize_pt;
  decltype(&cpu::dequantize_pc__scalar) dequantize_pc;
  decltype(&cpu::fake_quantize_pt__scalar) fake_pt;
  decltype(&cpu::fake_quantize_pc__scalar) fake_pc;
  decltype(&cpu::fake_quantize_grad_pt__scalar) grad_pt;
  decltype(&cpu::fake_quantize_grad_pc__scalar) grad_pc;
};

const Kernels& kernels() {
  static const Kernels scalar{cpu::quantize_pt__scalar,      cpu::quantize_pc__scalar,
                              cpu::dequantize_pt__scalar,    cpu::dequantize_pc__scalar,
                              cpu::fake_quantize_pt__scalar, cpu::fake_quantize_pc__scalar,
                              cpu::fake_quantize_grad_pt__scalar,
                              cpu::fake_quantize_grad_pc__scalar};
  static const Kernels avx2{cpu::quantize_pt__avx2,      cpu::quantize_pc__avx2,
                            cpu::dequantize_pt__avx2,    cpu::dequantize_pc__avx2,
                            cpu::fake_quantize_pt__avx2, cpu::fake_quantize_pc__avx2,
                            cpu::fake_quantize_grad_pt__avx2, cpu::fake_quantize_grad_pc__avx2};
  // Memory-bound elementwise kernels gain nothing from 512-bit vectors: AVX-512 CPUs use AVX2.
  return cpu_isa() == CpuIsa::Scalar ? scalar : avx2;
}

// Walks a contiguous tensor viewed as [outer, C, inner] (C = channels of the axis, 1 for per
// tensor), in parallel. Blocks that share one channel go to `pt(offset, n, channel)`. When
// `inner` is short, rows of C * inner elements go to `pc(offset, n, s, inv, zp)` with qparams
// expanded to one entry per element, so the vector kernels still see long runs.
template <class PT, class PC>
void for_each_block(int64_t numel, int64_t C, int64_t inner, const QParams& p, PT pt, PC pc) {
  if (numel == 0) return;
  if (C == 1) {
    at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) { pt(b, e - b, 0); });
    return;
  }
  const int64_t outer = numel / (C * inner);
  if (inner >= 64) {
    const int64_t blocks = outer * C;
    const int64_t grain = std::max<int64_t>(1, kGrain / inner);
    at::parallel_for(0, blocks, grain, [&](int64_t b, int64_t e) {
      for (int64_t blk = b; blk < e; ++blk) pt(blk * inner, inner, blk % C);
    });
    return;
  }
  const int64_t row = C * inner;
  std::vector<float> s(row), inv(row);
  std::vector<int32_t> zp(row);
  const float* ps = p.scale.data_ptr<float>();
  const float* pinv = p.inv();  // (nullptr for dequantize, which reads no 1 / scale)
  const int32_t* pz = p.zero_point.data_ptr<int32_t>();
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t i = 0; i < inner; ++i) {
      s[c * inner + i] = ps[c];
      inv[c * inner + i] = pinv != nullptr ? pinv[c] : 0.0f;
      zp[c * inner + i] = pz[c];
    }
  }
  const int64_t grain = std::max<int64_t>(1, kGrain / row);
  at::parallel_for(0, outer, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) pc(r * row, row, s.data(), inv.data(), zp.data());
  });
}

struct Layout {
  int64_t C = 1, inner = 1;
};

Layout layout(const at::Tensor& x, int64_t axis) {
  Layout l;
  if (axis < 0) return l;
  l.C = x.size(axis);
  for (int64_t d = axis + 1; d < x.dim(); ++d) l.inner *= x.size(d);
  return l;
}

at::Tensor as_float_contiguous(const at::Tensor& x) {
  // Float32 contiguous x is used in place without a call to to(), which would return x too
  // but through the dispatcher. Otherwise a copy: x is never written.
  if (x.scalar_type() == at::kFloat && x.is_contiguous()) return x;
  return x.to(at::kFloat).contiguous();
}

// x as float32, in its own strides when keeps_strides (common/checks.h; to() keeps a dense
// layout), else contiguous.
at::Tensor as_float(const at::Tensor& x, bool strided) {
  if (!strided) return as_float_contiguous(x);
  if (x.scalar_type() == at::kFloat) return x;
  at::Tensor f = x.to(at::kFloat);  // (preserve_format: a dense tensor's strides exactly)
  TORCH_INTERNAL_ASSERT(f.strides() == x.strides());
  return f;
}

at::Tensor new_output(const at::Tensor& like, bool strided, const at::TensorOptions& options) {
  return strided ? cpu::empty_output(like.sizes(), like.strides(), options) : cpu::empty_output(like.sizes(), options);
}

}  // namespace

at::Tensor quantize_cpu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                        std::optional<int64_t> axis, int64_t qmin, int64_t qmax,
                        at::ScalarType dtype) {
  check_float_input(x, "x");
  check_qrange(qmin, qmax, dtype);
  const QParams p = prepare_qparams(x, "x", scale, zero_point, axis, qmin, qmax);
  const bool strided = keeps_strides(x, p.axis);
  const at::Tensor xc = as_float(x, strided);
  at::Tensor out = new_output(x, strided, x.options().dtype(dtype));
  const Layout l = layout(x, p.axis);
  const float* px = xc.data_ptr<float>();
  auto* pq = static_cast<uint8_t*>(out.data_ptr());
  const bool u = dtype == at::kByte;
  const Kernels& k = kernels();
  const float* inv = p.inv();
  const int32_t* zp = p.zero_point.data_ptr<int32_t>();
  for_each_block(
      x.numel(), l.C, l.inner, p,
      [&](int64_t o, int64_t n, int64_t c) {
        k.quantize_pt(px + o, pq + o, n, inv[c], zp[c], qmin, qmax, u);
      },
      [&](int64_t o, int64_t n, const float*, const float* vinv, const int32_t* vzp) {
        k.quantize_pc(px + o, pq + o, n, vinv, vzp, qmin, qmax, u);
      });
  return out;
}

at::Tensor dequantize_cpu(const at::Tensor& q, const at::Tensor& scale,
                          const at::Tensor& zero_point, std::optional<int64_t> axis,
                          std::optional<at::ScalarType> out_dtype) {
  check_int8_input(q, "q");
  const at::ScalarType odt = out_dtype.value_or(at::kFloat);
  TORCH_CHECK(at::isFloatingType(odt), "argument 'out_dtype' must be a floating-point dtype, got ",
              odt);
  const bool u = q.scalar_type() == at::kByte;
  const QParams p = prepare_qparams(q, "q", scale, zero_point, axis, u ? 0 : -128, u ? 255 : 127,
                                    /*with_inv=*/false);
  const bool strided = keeps_strides(q, p.axis);
  const at::Tensor qc = strided ? q : q.contiguous();
  at::Tensor out = new_output(q, strided, q.options().dtype(at::kFloat));
  const Layout l = layout(q, p.axis);
  const auto* pq = static_cast<const uint8_t*>(qc.data_ptr());
  float* py = out.data_ptr<float>();
  const Kernels& k = kernels();
  const float* s = p.scale.data_ptr<float>();
  const int32_t* zp = p.zero_point.data_ptr<int32_t>();
  for_each_block(
      q.numel(), l.C, l.inner, p,
      [&](int64_t o, int64_t n, int64_t c) { k.dequantize_pt(pq + o, py + o, n, s[c], zp[c], u); },
      [&](int64_t o, int64_t n, const float* vs, const float*, const int32_t* vzp) {
        k.dequantize_pc(pq + o, py + o, n, vs, vzp, u);
      });
  return odt == at::kFloat ? out : out.to(odt);
}

at::Tensor fake_quantize_cpu(const at::Tensor& x, const at::Tensor& scale,
                             const at::Tensor& zero_point, std::optional<int64_t> axis,
                             int64_t qmin, int64_t qmax) {
  check_float_input(x, "x");
  check_fake_qrange(qmin, qmax);
  const QParams p = prepare_qparams(x, "x", scale, zero_point, axis, qmin, qmax);
  const bool strided = keeps_strides(x, p.axis);
  const at::Tensor xc = as_float(x, strided);
  at::Tensor out = new_output(x, strided, x.options().dtype(at::kFloat));
  const Layout l = layout(x, p.axis);
  const float* px = xc.data_ptr<float>();
  float* py = out.data_ptr<float>();
  const Kernels& k = kernels();
  const float* s = p.scale.data_ptr<float>();
  const float* inv = p.inv();
  const int32_t* zp = p.zero_point.data_ptr<int32_t>();
  for_each_block(
      x.numel(), l.C, l.inner, p,
      [&](int64_t o, int64_t n, int64_t c) {
        k.fake_pt(px + o, py + o, n, s[c], inv[c], zp[c], qmin, qmax);
      },
      [&](int64_t o, int64_t n, const float* vs, const float* vinv, const int32_t* vzp) {
        k.fake_pc(px + o, py + o, n, vs, vinv, vzp, qmin, qmax);
      });
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

at::Tensor fake_quantize_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                      const at::Tensor& scale, const at::Tensor& zero_point,
                                      std::optional<int64_t> axis, int64_t qmin, int64_t qmax) {
  check_float_input(x, "x");
  check_grad_like(grad, x);
  check_fake_qrange(qmin, qmax);
  const QParams p = prepare_qparams(x, "x", scale, zero_point, axis, qmin, qmax);
  // (in x's strides when grad has them too)
  const bool strided = keeps_strides(x, p.axis) && same_layout(grad, x);
  const at::Tensor xc = as_float(x, strided), gc = as_float(grad, strided);
  at::Tensor out = new_output(x, strided, x.options().dtype(at::kFloat));
  const Layout l = layout(x, p.axis);
  const float* px = xc.data_ptr<float>();
  const float* pg = gc.data_ptr<float>();
  float* py = out.data_ptr<float>();
  const Kernels& k = kernels();
  const float* inv = p.inv();
  const int32_t* zp = p.zero_point.data_ptr<int32_t>();
  for_each_block(
      x.numel(), l.C, l.inner, p,
      [&](int64_t o, int64_t n, int64_t c) {
        k.grad_pt(pg + o, px + o, py + o, n, inv[c], zp[c], qmin, qmax);
      },
      [&](int64_t o, int64_t n, const float*, const float* vinv, const int32_t* vzp) {
        k.grad_pc(pg + o, px + o, py + o, n, vinv, vzp, qmin, qmax);
      });
  return grad.scalar_type() == at::kFloat ? out : out.to(grad.scalar_type());
}

TORCH_LIBRARY_IMPL(torchquant, CPU, m) {
  m.impl("quantize", &quantize_cpu);
  m.impl("dequantize", &dequantize_cpu);
  m.impl("fake_quantize", &fake_quantize_cpu);
  m.impl("fake_quantize_backward", &fake_quantize_backward_cpu);
}

}  // namespace torchquant
