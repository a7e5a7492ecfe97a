// CPU adapters of the int4 weight-only ops: argument checks, packing into the kernel layout of
// int4_kernels.h, per-row activation quantization, the task grid over threads and the choice
// of kernel variant (int4_scalar.cpp, int4_avx2.cpp, int4_avx512.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "cpu/alloc.h"
#include "cpu/gemm_kernels.h"
#include "cpu/int4_kernels.h"
#include "cpu/isa.h"
#include "cpu/scratch.h"
#include "ops.h"

namespace torchquant {
namespace {

using Int4Fn = decltype(&cpu::int4_compute__scalar);
using RowsFn = decltype(&cpu::quantize_rows__scalar);

void int4_kernels(Int4Fn* compute, RowsFn* rows) {
  switch (cpu_isa()) {
    case CpuIsa::Avx512Vnni:
      *compute = cpu::int4_compute__avx512vnni;
      *rows = cpu::quantize_rows__avx512vnni;
      return;
    case CpuIsa::Avx2:
      *compute = cpu::int4_compute__avx2;
      *rows = cpu::quantize_rows__avx2;
      return;
    default:
      *compute = cpu::int4_compute__scalar;
      *rows = cpu::quantize_rows__scalar;
  }
}

void check_cpu_arg(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), "argument '", name, "' must be a tensor, got None");
  TORCH_CHECK(t.device().is_cpu(), "argument '", name, "' must be a CPU tensor, got ", t.device());
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

// Shared by the CPU and CUDA adapters: group_size and in_features, and the portable weight's
// shapes; returns G = ceil(K / group_size).
int64_t check_int4_format(const at::Tensor& qweight, const at::Tensor& scale,
                          const at::Tensor& zero_point, int64_t in_features, int64_t group_size) {
  TORCH_CHECK(group_size >= cpu::kInt4Block && group_size <= cpu::kInt4MaxGroup &&
                  group_size % cpu::kInt4Block == 0,
              "argument 'group_size' must be a multiple of 8 in [8, 2048] (32, 64 and 128 are "
              "the usual ones), got ", group_size);
  TORCH_CHECK(in_features >= 0, "argument 'in_features' must be >= 0, got ", in_features);
  TORCH_CHECK(qweight.defined() && scale.defined() && zero_point.defined(),
              "arguments 'qweight', 'scale' and 'zero_point' must be tensors, got None");
  TORCH_CHECK(qweight.scalar_type() == at::kByte && qweight.dim() == 2,
              "argument 'qweight' must be a 2-D uint8 tensor [N, ceil(K / 2)] (two 4-bit values "
              "per byte), got dtype ", qweight.scalar_type(), " and shape ", qweight.sizes());
  const int64_t N = qweight.size(0);
  TORCH_CHECK(qweight.size(1) == ceil_div(in_features, 2), "argument 'qweight' must have ",
              ceil_div(in_features, 2), " bytes per row for in_features = ", in_features,
              ", got shape ", qweight.sizes());
  const int64_t G = ceil_div(in_features, group_size);
  TORCH_CHECK(at::isFloatingType(scale.scalar_type()) && scale.dim() == 2 && scale.size(0) == N &&
                  scale.size(1) == G,
              "argument 'scale' must be a floating-point tensor of shape [", N, ", ", G,
              "] (one per output channel and group of ", group_size, "), got dtype ",
              scale.scalar_type(), " and shape ", scale.sizes());
  TORCH_CHECK((zero_point.scalar_type() == at::kByte || zero_point.scalar_type() == at::kInt ||
               zero_point.scalar_type() == at::kLong || zero_point.scalar_type() == at::kChar) &&
                  zero_point.dim() == 2 && zero_point.size(0) == N && zero_point.size(1) == G,
              "argument 'zero_point' must be an integer tensor of shape [", N, ", ", G,
              "], got dtype ", zero_point.scalar_type(), " and shape ", zero_point.sizes());
  check_same_device(qweight, "qweight", scale, "scale");
  check_same_device(qweight, "qweight", zero_point, "zero_point");
  return G;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> int4_pack_weight_cpu(
    const at::Tensor& qweight, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t in_features, int64_t group_size) {
  check_cpu_arg(qweight, "qweight");
  const int64_t G = check_int4_format(qweight, scale, zero_point, in_features, group_size);
  const int64_t N = qweight.size(0), K = in_features;
  const int64_t Kp = G * group_size, P = ceil_div(N, cpu::kInt4Panel);
  const at::Tensor s = scale.to(at::kFloat).contiguous();
  check_scale_values(scale, s.const_data_ptr<float>(), s.numel(), "scale", nullptr);
  const at::Tensor z = zero_point.to(at::kLong).contiguous();
  const int64_t* pz = z.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < z.numel(); ++i)
    TORCH_CHECK(pz[i] >= 0 && pz[i] <= 15, "argument 'zero_point' must lie in [0, 15], got ",
                pz[i], " at channel ", i / std::max<int64_t>(G, 1), ", group ", i % std::max<int64_t>(G, 1));
  const at::Tensor qw = qweight.contiguous();
  const uint8_t* pq = qw.const_data_ptr<uint8_t>();
  const int64_t ldq = qw.size(1);
  at::Tensor packed = at::zeros({P, Kp / cpu::kInt4Block, 64}, qweight.options());
  at::Tensor qp = at::zeros({P, G, 32}, qweight.options().dtype(at::kShort));
  at::Tensor ws = at::ones({P, G, cpu::kInt4Panel}, qweight.options().dtype(at::kFloat));
  uint8_t* pp = packed.data_ptr<uint8_t>();
  int16_t* pqp = qp.data_ptr<int16_t>();
  float* pws = ws.data_ptr<float>();
  const float* ps = s.const_data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t pi = n / cpu::kInt4Panel, c = n % cpu::kInt4Panel;
      for (int64_t g = 0; g < G; ++g) {
        const int32_t zg = static_cast<int32_t>(pz[n * G + g]);
        int32_t wz = 0;
        for (int64_t k = g * group_size; k < (g + 1) * group_size; ++k) {
          const int32_t v = k < K ? (pq[n * ldq + k / 2] >> (4 * (k & 1))) & 0x0F : zg;
          wz += v - zg;
          const int64_t b = k / cpu::kInt4Block, j = k % cpu::kInt4Block;
          uint8_t& byte = pp[(pi * (Kp / cpu::kInt4Block) + b) * 64 + 4 * c + (j & 3)];
          byte = static_cast<uint8_t>(byte | (v << (j < 4 ? 0 : 4)));
        }
        pqp[(pi * G + g) * 32 + c] = static_cast<int16_t>(zg);
        pqp[(pi * G + g) * 32 + 16 + c] = static_cast<int16_t>(wz);
        pws[(pi * G + g) * cpu::kInt4Panel + c] = ps[n * G + g];
      }
    }
  });
  return {packed, qp, ws};
}

at::Tensor linear_int4_cpu(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_qp,
                           const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                           int64_t in_features, int64_t out_features, int64_t group_size) {
  check_float_input(x, "x");
  check_cpu_arg(x, "x");
  TORCH_CHECK(x.dim() >= 1, "argument 'x' must have at least 1 dimension [..., K], got a scalar");
  const int64_t K = x.size(-1), N = out_features;
  TORCH_CHECK(K == in_features, "argument 'x' has K = ", K,
              " (its last dimension) but the weight was packed for in_features = ", in_features);
  TORCH_CHECK(group_size >= cpu::kInt4Block && group_size <= cpu::kInt4MaxGroup &&
                  group_size % cpu::kInt4Block == 0,
              "argument 'group_size' must be a multiple of 8 in [8, 2048], got ", group_size);
  TORCH_CHECK(N >= 0, "argument 'out_features' must be >= 0, got ", N);
  const int64_t G = ceil_div(K, group_size), Kp = G * group_size, P = ceil_div(N, cpu::kInt4Panel);
  for (auto [t, name] : {std::pair<const at::Tensor*, const char*>{&w_packed, "w_packed"},
                         {&w_qp, "w_qp"}, {&w_scale, "w_scale"}}) {
    check_cpu_arg(*t, name);
    TORCH_CHECK(t->is_contiguous(), "argument '", name, "' must be contiguous (from int4_pack_weight)");
  }
  TORCH_CHECK(w_packed.scalar_type() == at::kByte && w_packed.dim() == 3 && w_packed.size(0) == P &&
                  w_packed.size(1) == Kp / cpu::kInt4Block && w_packed.size(2) == 64,
              "argument 'w_packed' must be a uint8 tensor of shape [", P, ", ", Kp / cpu::kInt4Block,
              ", 64] (int4_pack_weight on the CPU for N = ", N, ", K = ", K, ", group_size = ",
              group_size, "), got dtype ", w_packed.scalar_type(), " and shape ", w_packed.sizes());
  TORCH_CHECK(w_qp.scalar_type() == at::kShort && w_qp.dim() == 3 && w_qp.size(0) == P &&
                  w_qp.size(1) == G && w_qp.size(2) == 32,
              "argument 'w_qp' must be an int16 tensor of shape [", P, ", ", G, ", 32], got dtype ",
              w_qp.scalar_type(), " and shape ", w_qp.sizes());
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.dim() == 3 && w_scale.size(0) == P &&
                  w_scale.size(1) == G && w_scale.size(2) == cpu::kInt4Panel,
              "argument 'w_scale' must be a float32 tensor of shape [", P, ", ", G, ", 16], got dtype ",
              w_scale.scalar_type(), " and shape ", w_scale.sizes());
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    check_cpu_arg(*bias, "bias");
    TORCH_CHECK(at::isFloatingType(bias->scalar_type()) && bias->numel() == N,
                "argument 'bias' must be a floating-point tensor with ", N, " elements, got dtype ",
                bias->scalar_type(), " and ", bias->numel(), " elements");
    b = bias->to(at::kFloat).contiguous();
  }
  const at::ScalarType odt = x.scalar_type();
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  int64_t M = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) M *= x.size(d);
  at::Tensor out = cpu::empty_output(shape, x.options().dtype(at::kFloat));
  if (M == 0 || N == 0) return out.to(odt);
  if (K == 0) {
    if (b.defined()) out.copy_(b.expand_as(out)); else out.zero_();
    return out.to(odt);
  }
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  Int4Fn compute;
  RowsFn rows_fn;
  int4_kernels(&compute, &rows_fn);
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> xs;
  thread_local std::vector<int32_t> xz, xsum;
  cpu::scratch(xq, static_cast<size_t>(M * Kp));
  cpu::scratch(xs, static_cast<size_t>(M));
  cpu::scratch(xz, static_cast<size_t>(M));
  cpu::scratch(xsum, static_cast<size_t>(M * G));
  const float* px = xf.const_data_ptr<float>();
  int8_t* pxq = xq.data();
  float* pxs = xs.data();
  int32_t* pxz = xz.data();
  int32_t* pxsum = xsum.data();
  const int64_t grain = std::max<int64_t>(1, 32768 / Kp);
  at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
    rows_fn(px + r0 * K, K, r1 - r0, K, -128, 127, pxq + r0 * Kp, Kp, pxs + r0, pxz + r0);
    for (int64_t r = r0; r < r1; ++r) {
      int8_t* row = pxq + r * Kp;
      std::fill(row + K, row + Kp, int8_t{0});
      for (int64_t g = 0; g < G; ++g) {
        int32_t sum = 0;
        for (int64_t k = g * group_size; k < (g + 1) * group_size; ++k) sum += row[k];
        pxsum[r * G + g] = sum;
      }
    }
  });
  cpu::Int4Problem p;
  p.M = M;
  p.N = N;
  p.Kp = Kp;
  p.G = G;
  p.group_size = group_size;
  p.w = w_packed.const_data_ptr<uint8_t>();
  p.qp = w_qp.const_data_ptr<int16_t>();
  p.ws = w_scale.const_data_ptr<float>();
  p.xq = pxq;
  p.xsum = pxsum;
  p.x_scale = pxs;
  p.x_zp = pxz;
  p.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  p.out = out.data_ptr<float>();
  // Tasks are blocks of panels: one thread streams a contiguous slice of the weight, which is
  // what M = 1 (decoding) needs; every task covers all rows, so a panel is read once from memory.
  const int64_t work_per_panel = M * Kp * cpu::kInt4Panel;
  const int64_t panel_grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(work_per_panel, 1));
  at::parallel_for(0, P, panel_grain, [&](int64_t p0, int64_t p1) { compute(p, 0, M, p0, p1); });
  return odt == at::kFloat ? out : out.to(odt);
}

TORCH_LIBRARY_IMPL(torchquant, CPU, m) {
  m.impl("int4_pack_weight", &int4_pack_weight_cpu);
  m.impl("linear_int4", &linear_int4_cpu);
}

}  // namespace torchquant
