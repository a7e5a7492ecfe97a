// CPU adapters of the int8 pooling ops: argument checks and window tables
// (common/pool_shape.cpp), threads, and the choice of kernel variant (cpu/pool_*.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/pool_shape.h"
#include "cpu/isa.h"
#include "cpu/pool_kernels.h"
#include "ops.h"

namespace torchquant {
namespace {

// Bytes of input a thread should read at least before another one is worth waking.
constexpr int64_t kGrainBytes = 65536;

struct Kernels {
  decltype(&cpu::max_pool_cl__scalar) max_cl, avg_cl;
  decltype(&cpu::max_pool_planar__scalar) max_planar, avg_planar;
};

const Kernels& kernels(bool force_scalar) {
  static const Kernels scalar{cpu::max_pool_cl__scalar, cpu::avg_pool_cl__scalar,
                              cpu::max_pool_planar__scalar, cpu::avg_pool_planar__scalar};
  static const Kernels avx2{cpu::max_pool_cl__avx2, cpu::avg_pool_cl__avx2, cpu::max_pool_planar__avx2,
                            cpu::avg_pool_planar__avx2};
  // Memory-bound: AVX-512 CPUs use the AVX2 kernels.
  return force_scalar || cpu_isa() == CpuIsa::Scalar ? scalar : avx2;
}

at::Tensor run(const PoolProblem& p, bool is_max, int32_t zp) {
  const PoolGeometry& g = p.g;
  at::Tensor out = pool_output5(p);
  const int64_t pixels = g.N * g.out[0] * g.out[1] * g.out[2];
  if (pixels == 0 || g.C == 0) return pool_result(p, out);
  cpu::PoolArgs a;
  a.x = static_cast<const uint8_t*>(p.x5.const_data_ptr());
  a.y = static_cast<uint8_t*>(out.data_ptr());
  a.N = g.N;
  a.C = g.C;
  for (int j = 0; j < 3; ++j) {
    a.in[j] = g.in[j];
    a.out[j] = g.out[j];
    a.step[j] = g.step[j];
    a.first[j] = g.first[j];
    a.taps[j] = g.taps[j];
    a.div[j] = g.div[j];
  }
  a.divisor_override = g.divisor_override;
  a.zp = zp;
  a.is_unsigned = p.x5.scalar_type() == at::kByte;
  const Kernels& k = kernels(!is_max && g.max_taps > cpu::kPoolMaxTapsInt32);
  const int64_t taps = std::max<int64_t>(g.max_taps, 1);
  if (g.channels_last) {
    // Work items: (output pixel, channel chunk). Few pixels (global pooling) split the
    // channels, in chunks of whole 64-channel blocks, so that both threads get work.
    int64_t cw = g.C;
    if (pixels < 2 * at::get_num_threads() && g.C >= 128) {
      const int64_t want = std::max<int64_t>(2 * at::get_num_threads() / pixels, 1);
      cw = std::max<int64_t>(64, ((g.C + want - 1) / want + 63) / 64 * 64);
    }
    const int64_t chunks = (g.C + cw - 1) / cw;
    const int64_t grain = std::max<int64_t>(1, kGrainBytes / (taps * cw));
    const auto fn = is_max ? k.max_cl : k.avg_cl;
    at::parallel_for(0, pixels * chunks, grain, [&](int64_t begin, int64_t end) {
      if (chunks == 1) return fn(a, begin, end, 0, g.C);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t p0 = i / chunks, c0 = (i % chunks) * cw;
        fn(a, p0, p0 + 1, c0, std::min(g.C, c0 + cw));
      }
    });
  } else {
    const int64_t rows = g.N * g.C * g.out[0] * g.out[1];
    const int64_t grain = std::max<int64_t>(1, kGrainBytes / (taps * g.out[2]));
    const auto fn = is_max ? k.max_planar : k.avg_planar;
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { fn(a, begin, end); });
  }
  return pool_result(p, out);
}

}  // namespace

at::Tensor max_pool_int8_cpu(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const PoolProblem p = pool_problem(x, PoolKind::Max, kernel_size, stride, padding, dilation, ceil_mode,
                                     false, std::nullopt, {});
  return run(p, true, 0);
}

at::Tensor avg_pool_int8_cpu(const at::Tensor& x, const at::Tensor& zero_point, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                             bool count_include_pad, std::optional<int64_t> divisor_override) {
  const PoolProblem p = pool_problem(x, PoolKind::Avg, kernel_size, stride, padding, {}, ceil_mode,
                                     count_include_pad, divisor_override, {});
  return run(p, false, pool_zero_point(p.x5, zero_point, nullptr));
}

at::Tensor adaptive_avg_pool_int8_cpu(const at::Tensor& x, const at::Tensor& zero_point,
                                      at::IntArrayRef output_size) {
  const PoolProblem p = pool_problem(x, PoolKind::Adaptive, {}, {}, {}, {}, false, false, std::nullopt,
                                     output_size);
  return run(p, false, pool_zero_point(p.x5, zero_point, nullptr));
}

TORCH_LIBRARY_IMPL(torchquant, CPU, m) {
  m.impl("max_pool_int8", &max_pool_int8_cpu);
  m.impl("avg_pool_int8", &avg_pool_int8_cpu);
  m.impl("adaptive_avg_pool_int8", &adaptive_avg_pool_int8_cpu);
}

}  // namespace torchquant
