// CUDA kernels of the int8 pooling ops (max_pool_int8, avg_pool_int8, adaptive_avg_pool_int8).
//
// One thread per output element, in the output's memory order (channels-last: consecutive
// threads take consecutive channels, so every tap's loads coalesce). Each thread recomputes its
// window from the pooling arguments with the formulas of common/pool_shape.cpp (the CPU
// tables), sums in int64 and finishes with the CPU kernels' float32 steps (-fmad=false, IEEE
// division), so the results are bit-identical. The zero point stays on the device (clamped into
// the dtype's range, as the quantize kernels do): no host synchronization.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/pool_shape.h"
#include "cuda/common.cuh"
#include "ops.h"

namespace torchquant {
namespace cuda {
namespace {

struct PoolDev {
  int64_t N, C;
  int64_t in[3], out[3], k[3], s[3], p[3], d[3];
  int64_t divisor_override;
  const int32_t* zp;
  int kind;  // PoolKind
  bool count_include_pad, channels_last, is_unsigned;
};

// The window of output index o along dimension j: first valid input index, valid taps, divisor
// factor.
__device__ __forceinline__ void window(const PoolDev& a, int j, int64_t o, int64_t& first, int64_t& n,
                                       int64_t& div) {
  const int64_t in = a.in[j];
  if (a.kind == static_cast<int>(PoolKind::Adaptive)) {
    first = (o * in) / a.out[j];
    n = ((o + 1) * in + a.out[j] - 1) / a.out[j] - first;
    div = n;
  } else if (a.kind == static_cast<int>(PoolKind::Max)) {
    const int64_t start = o * a.s[j] - a.p[j], d = a.d[j];
    const int64_t t0 = start >= 0 ? 0 : (-start + d - 1) / d;
    const int64_t lim = in - start > 0 ? (in - start + d - 1) / d : 0;
    const int64_t t1 = a.k[j] < lim ? a.k[j] : lim;
    n = t1 - t0 > 0 ? t1 - t0 : 0;
    first = n > 0 ? start + t0 * d : 0;
    div = 1;
  } else {
    const int64_t start = o * a.s[j] - a.p[j];
    const int64_t end = start + a.k[j] < in + a.p[j] ? start + a.k[j] : in + a.p[j];
    const int64_t lo = start > 0 ? start : 0, hi = end < in ? end : in;
    n = hi - lo > 0 ? hi - lo : 0;
    first = lo;
    div = a.count_include_pad ? end - start : n;
  }
}

__global__ void __launch_bounds__(kThreads) pool_kernel(const uint8_t* __restrict__ x, uint8_t* __restrict__ y,
                                                        PoolDev a, int64_t total) {
  const int32_t lo = a.is_unsigned ? 0 : -128, hi = a.is_unsigned ? 255 : 127;
  const bool is_max = a.kind == static_cast<int>(PoolKind::Max);
  int32_t zp = is_max ? 0 : a.zp[0];
  zp = zp < lo ? lo : (zp > hi ? hi : zp);
  const int64_t D = a.in[0], H = a.in[1], W = a.in[2], C = a.C;
  const int64_t OD = a.out[0], OH = a.out[1], OW = a.out[2];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t c, ow, oh, od, n, r = i;
    if (a.channels_last) {
      c = r % C; r /= C;
      ow = r % OW; r /= OW;
      oh = r % OH; r /= OH;
      od = r % OD; n = r / OD;
    } else {
      ow = r % OW; r /= OW;
      oh = r % OH; r /= OH;
      od = r % OD; r /= OD;
      c = r % C; n = r / C;
    }
    int64_t fd, nd, dd, fh, nh, dh, fw, nw, dw;
    window(a, 0, od, fd, nd, dd);
    window(a, 1, oh, fh, nh, dh);
    window(a, 2, ow, fw, nw, dw);
    // Element (n, c, id, ih, iw) at base + ((id * H + ih) * W + iw) * pix.
    const int64_t pix = a.channels_last ? C : 1;
    const uint8_t* base = a.channels_last ? x + n * D * H * W * C + c : x + (n * C + c) * D * H * W;
    int32_t m = lo;
    long long s = 0;
    for (int64_t td = 0; td < nd; ++td) {
      const int64_t id = fd + td * a.d[0];
      for (int64_t th = 0; th < nh; ++th) {
        const int64_t ih = fh + th * a.d[1];
        const uint8_t* row = base + (id * H + ih) * W * pix;
        for (int64_t tw = 0; tw < nw; ++tw) {
          const uint8_t b = row[(fw + tw * a.d[2]) * pix];
          const int32_t v = a.is_unsigned ? static_cast<int32_t>(b) : static_cast<int32_t>(static_cast<int8_t>(b));
          if (is_max) {
            m = v > m ? v : m;
          } else {
            s += v;
          }
        }
      }
    }
    if (is_max) {
      y[i] = static_cast<uint8_t>(m);
    } else {
      const long long count = a.divisor_override != 0 ? a.divisor_override : static_cast<long long>(dd) * dh * dw;
      s -= static_cast<long long>(nd * nh * nw) * zp;
      const float inv = 1.0f / static_cast<float>(count);
      float t = nearbyintf(static_cast<float>(s) * inv) + static_cast<float>(zp);
      t = t < static_cast<float>(lo) ? static_cast<float>(lo) : (t > static_cast<float>(hi) ? static_cast<float>(hi) : t);
      y[i] = static_cast<uint8_t>(static_cast<int32_t>(t));
    }
  }
}

at::Tensor run(const PoolProblem& p, const at::Tensor& zp) {
  const PoolGeometry& g = p.g;
  at::Tensor out = pool_output5(p);
  const int64_t total = out.numel();
  if (total == 0) return pool_result(p, out);
  PoolDev a{};
  a.N = g.N;
  a.C = g.C;
  for (int j = 0; j < 3; ++j) {
    a.in[j] = g.in[j];
    a.out[j] = g.out[j];
    a.k[j] = g.kernel[j];
    a.s[j] = g.stride[j];
    a.p[j] = g.pad[j];
    a.d[j] = g.step[j];
  }
  a.divisor_override = g.divisor_override;
  a.zp = zp.defined() ? zp.data_ptr<int32_t>() : nullptr;
  a.kind = static_cast<int>(g.kind);
  a.count_include_pad = g.count_include_pad;
  a.channels_last = g.channels_last;
  a.is_unsigned = p.x5.scalar_type() == at::kByte;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  pool_kernel<<<grid_for(total), kThreads, 0, stream>>>(static_cast<const uint8_t*>(p.x5.const_data_ptr()),
                                                         static_cast<uint8_t*>(out.data_ptr()), a, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return pool_result(p, out);
}

}  // namespace

at::Tensor max_pool_int8_cuda(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const c10::cuda::OptionalCUDAGuard guard(x.defined() ? std::optional<c10::Device>(x.device()) : std::nullopt);
  const PoolProblem p = pool_problem(x, PoolKind::Max, kernel_size, stride, padding, dilation, ceil_mode,
                                     false, std::nullopt, {});
  return run(p, at::Tensor());
}

at::Tensor avg_pool_int8_cuda(const at::Tensor& x, const at::Tensor& zero_point, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                              bool count_include_pad, std::optional<int64_t> divisor_override) {
  // A CPU x beside a CUDA zero_point dispatches here: the devices are compared before the guard.
  if (x.defined() && zero_point.defined()) check_same_device(x, "x", zero_point, "zero_point");
  const c10::cuda::OptionalCUDAGuard guard(x.defined() ? std::optional<c10::Device>(x.device()) : std::nullopt);
  const PoolProblem p = pool_problem(x, PoolKind::Avg, kernel_size, stride, padding, {}, ceil_mode,
                                     count_include_pad, divisor_override, {});
  at::Tensor zp;
  pool_zero_point(p.x5, zero_point, &zp);
  return run(p, zp);
}

at::Tensor adaptive_avg_pool_int8_cuda(const at::Tensor& x, const at::Tensor& zero_point,
                                       at::IntArrayRef output_size) {
  if (x.defined() && zero_point.defined()) check_same_device(x, "x", zero_point, "zero_point");
  const c10::cuda::OptionalCUDAGuard guard(x.defined() ? std::optional<c10::Device>(x.device()) : std::nullopt);
  const PoolProblem p = pool_problem(x, PoolKind::Adaptive, {}, {}, {}, {}, false, false, std::nullopt,
                                     output_size);
  at::Tensor zp;
  pool_zero_point(p.x5, zero_point, &zp);
  return run(p, zp);
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(torchquant, CUDA, m) {
  m.impl("max_pool_int8", &cuda::max_pool_int8_cuda);
  m.impl("avg_pool_int8", &cuda::avg_pool_int8_cuda);
  m.impl("adaptive_avg_pool_int8", &cuda::adaptive_avg_pool_int8_cuda);
}

}  // namespace torchquant
