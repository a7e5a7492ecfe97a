// CPU adapters of the int4 weight-only ops: argument checks, packing into the kernel layout of
// int4_kernels.h, per-row activation quantization, the task grid over threads and the choice
// of kernel variant (int4_scalar.cpp, int4_avx2.cpp (AVX2 and AVX-VNNI), int4_avx512.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
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
    case CpuIsa::Amx:  // int4 has no tile kernel: AVX-512 VNNI's
    case CpuIsa::Avx512Vnni:
      *compute = cpu::int4_compute__avx512vnni;
      *rows = cpu::quantize_rows__avx512vnni;
      return;
    case CpuIsa::AvxVnni:
      *compute = cpu::int4_compute__avxvnni;
      *rows = cpu::quantize_rows__avx2;
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

// Shared by the CPU and CUDA packing: the scales v (float32 [N, G], on the host) of `scale` (as
// given, on the host) are > 0 and finite; the error names the channel and group, as the zero
// points' does.
void check_int4_scale_values(const at::Tensor& scale, const float* v, int64_t G) {
  for (int64_t i = 0; i < scale.numel(); ++i) {
    if (std::isfinite(v[i]) && v[i] > 0.0f) continue;
    const int64_t n = i / G;
    const std::string where = "channel " + std::to_string(n) + ", group";
    check_scale_values(scale.select(0, n), v + n * G, G, "scale", where.c_str());
  }
}

// Shared by the CPU and CUDA adapters: group_size and in_features, and the portable weight's
// shapes; returns G = ceil(K / group_size).
int64_t check_int4_format(const at::Tensor& qweight, const at::Tensor& scale,
                          const at::Tensor& zero_point, int64_t in_features, int64_t group_size) {
  TORCH_CHECK(group_size >= cpu::kInt4Block && group_size <= cpu::kInt4MaxGroup &&
                  group_size % cpu::kInt4Block == 0,
              "argument 'group_size' must be a multiple of 8 in [8, 2048] (32, 64 and 128 are "
              "the usual ones), got ", group_size);
  TORCH_CHECK(in_features >= 0 && in_features <= (int64_t{1} << 40),
              "argument 'in_features' must lie in [0, 2^40], got ", in_features);
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
               zero_point.scalar_type() == at::kLong || zero_point.scalar_type() == at::kChar ||
               zero_point.scalar_type() == at::kShort) &&
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
  const int64_t P = ceil_div(N, cpu::kInt4Panel);
  const at::Tensor s = scale.to(at::kFloat).contiguous();
  check_int4_scale_values(scale, s.const_data_ptr<float>(), G);
  const at::Tensor z = zero_point.to(at::kLong).contiguous();
  const int64_t* pz = z.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < z.numel(); ++i)
    TORCH_CHECK(pz[i] >= 0 && pz[i] <= 15, "argument 'zero_point' must lie in [0, 15], got ",
                pz[i], " at channel ", i / std::max<int64_t>(G, 1), ", group ", i % std::max<int64_t>(G, 1));
  const at::Tensor qw = qweight.contiguous();
  const uint8_t* pq = qw.const_data_ptr<uint8_t>();
  const int64_t ldq = qw.size(1);
  const int64_t R = cpu::int4_record_bytes(group_size), bpg = group_size / cpu::kInt4Block;
  // Huge pages where the system grants them: the M = 1 kernel streams this tensor from memory,
  // and with 4 KiB pages the hardware prefetchers stop at every page boundary (4096 x 4096 at
  // M = 1: 38 -> 59 GB/s with 2 threads in a stand-alone test; in the op, 1 thread: 604 -> 384 us
  // per 4096 x 4096 g128 layer; 2 threads on an idle machine: both layouts at ~35 GB/s, the
  // memory's limit there).
  at::Tensor packed = cpu::zeros_streamed({P, G, R}, qweight.options());
  uint8_t* pp = packed.data_ptr<uint8_t>();
  const float* ps = s.const_data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t pi = n / cpu::kInt4Panel, c = n % cpu::kInt4Panel;
      for (int64_t g = 0; g < G; ++g) {
        uint8_t* rec = pp + (pi * G + g) * R;
        const int32_t zg = static_cast<int32_t>(pz[n * G + g]);
        int32_t wz = 0;
        for (int64_t j = 0; j < group_size; ++j) {
          const int64_t k = g * group_size + j;
          const int32_t v = k < K ? (pq[n * ldq + k / 2] >> (4 * (k & 1))) & 0x0F : zg;
          wz += v - zg;
          const int64_t b = j / cpu::kInt4Block, jj = j % cpu::kInt4Block;
          uint8_t& byte = rec[b * 64 + 4 * c + (jj & 3)];
          byte = static_cast<uint8_t>(byte | (v << (jj < 4 ? 0 : 4)));
        }
        uint8_t* qpart = rec + bpg * 64;
        reinterpret_cast<float*>(qpart)[c] = ps[n * G + g];
        reinterpret_cast<int16_t*>(qpart + 64)[c] = static_cast<int16_t>(zg);
        reinterpret_cast<int16_t*>(qpart + 96)[c] = static_cast<int16_t>(wz);
      }
    }
  });
  // The qparams live in w_packed's records; the other two outputs keep the op's signature.
  at::Tensor qp = at::empty({0}, qweight.options().dtype(at::kShort));
  at::Tensor ws = at::empty({0}, qweight.options().dtype(at::kFloat));
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
  const int64_t R = cpu::int4_record_bytes(group_size);
  TORCH_CHECK(w_packed.scalar_type() == at::kByte && w_packed.dim() == 3 && w_packed.size(0) == P &&
                  w_packed.size(1) == G && w_packed.size(2) == R,
              "argument 'w_packed' must be a uint8 tensor of shape [", P, ", ", G, ", ", R,
              "] (int4_pack_weight on the CPU for N = ", N, ", K = ", K, ", group_size = ",
              group_size, "), got dtype ", w_packed.scalar_type(), " and shape ", w_packed.sizes());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(w_packed.const_data_ptr()) % 4 == 0,
              "argument 'w_packed' must start at a 4-byte aligned address (its float32 scales are "
              "read in place), got a storage offset of ", w_packed.storage_offset(), " bytes");
  TORCH_CHECK(w_qp.scalar_type() == at::kShort && w_qp.dim() == 1 && w_qp.numel() == 0,
              "argument 'w_qp' must be the empty int16 tensor of int4_pack_weight on the CPU (the "
              "qparams are in w_packed), got dtype ", w_qp.scalar_type(), " and shape ", w_qp.sizes());
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.dim() == 1 && w_scale.numel() == 0,
              "argument 'w_scale' must be the empty float32 tensor of int4_pack_weight on the CPU "
              "(the scales are in w_packed), got dtype ", w_scale.scalar_type(), " and shape ",
              w_scale.sizes());
  // w_packed's shape gives N only to a panel of 16 channels; its scales give it exactly: a
  // packed channel's scales are > 0 (int4_pack_weight checks them), a padding channel's are 0.
  if (N > 0 && G > 0) {
    const float* sc = reinterpret_cast<const float*>(w_packed.const_data_ptr<uint8_t>() + (P - 1) * G * R +
                                                     group_size / cpu::kInt4Block * 64);
    int64_t packed_n = (P - 1) * cpu::kInt4Panel;
    while (packed_n - (P - 1) * cpu::kInt4Panel < cpu::kInt4Panel &&
           sc[packed_n - (P - 1) * cpu::kInt4Panel] > 0.0f)
      ++packed_n;
    TORCH_CHECK(packed_n == N, "argument 'out_features' must be the number of output channels 'w_packed' was "
                "packed for (int4_pack_weight), ", packed_n, ", got ", N);
  }
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    check_cpu_arg(*bias, "bias");
    TORCH_CHECK(at::isFloatingType(bias->scalar_type()) && bias->dim() == 1 && bias->size(0) == N,
                "argument 'bias' must be a floating-point tensor of shape [", N, "], got dtype ",
                bias->scalar_type(), " and shape ", bias->sizes());
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
  const cpu::CallScratch<int8_t> xq_call(xq, static_cast<size_t>(M * Kp));
  const cpu::CallScratch<float> xs_call(xs, static_cast<size_t>(M));
  const cpu::CallScratch<int32_t> xz_call(xz, static_cast<size_t>(M));
  const cpu::CallScratch<int32_t> xsum_call(xsum, static_cast<size_t>(M * G));
  const float* px = xf.const_data_ptr<float>();
  int8_t* pxq = xq_call.data();
  float* pxs = xs_call.data();
  int32_t* pxz = xz_call.data();
  int32_t* pxsum = xsum_call.data();
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
  p.R = R;
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
