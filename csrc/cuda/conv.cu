// CUDA int8 convolution: direct kernels, one thread per output element, that read the
// channels-last activations in place (padded taps read the zero point) and end in the GEMM's
// epilogue_store (gemm.cuh), the same device function as linear_int8's, so the results equal the
// CPU's bit for bit. General convolutions use the packed weight [groups, *kernel_size, Cin /
// groups, Cout / groups] (a [groups, K, Cout / groups] matrix, K = taps * Cin / groups, taps-major,
// whose shape keeps the kernel's sizes for the op's check): consecutive threads take consecutive output channels
// of one pixel, so their weight reads are contiguous and their activation reads one broadcast.
// Depthwise convolutions use [*kernel_size, C], with consecutive threads on consecutive channels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/conv_checks.h"
#include "cuda/common.cuh"
#include "cuda/args.h"
#include "cuda/conv_mma.h"
#include "cuda/gemm.cuh"

namespace torchquant {
namespace cuda {
namespace {

struct ConvDev {
  ConvGeometry g;
  int64_t Cout = 0, Cg = 0, Ng = 0, Kg = 0;
};

template <bool U>
__device__ __forceinline__ int32_t load_x(const void* x, int64_t at) {
  return U ? int32_t{static_cast<const uint8_t*>(x)[at]} : int32_t{static_cast<const int8_t*>(x)[at]};
}

template <bool U>
__global__ void conv_general_kernel(const void* __restrict__ x, const int8_t* __restrict__ w,
                                    ConvDev c, Epilogue e, int64_t total) {
  const ConvGeometry& g = c.g;
  const int32_t zp = clamp_int(e.x_zp[0], e.x_zp_lo, e.x_zp_hi);
  const float inv = epilogue_inv_out_scale(e);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = idx / c.Cout, ch = idx % c.Cout, grp = ch / c.Ng, j = ch % c.Ng;
    int64_t n, od, oh, ow;
    conv_pixel_of(g, m, &n, &od, &oh, &ow);
    const int8_t* wg = w + grp * c.Kg * c.Ng + j;
    int32_t acc = 0;
    int64_t k = 0;
    for (int64_t kd = 0; kd < g.k[0]; ++kd) {
      const int64_t id = od * g.stride[0] - g.pad[0] + kd * g.dil[0];
      for (int64_t kh = 0; kh < g.k[1]; ++kh) {
        const int64_t ih = oh * g.stride[1] - g.pad[1] + kh * g.dil[1];
        for (int64_t kw = 0; kw < g.k[2]; ++kw) {
          const int64_t iw = ow * g.stride[2] - g.pad[2] + kw * g.dil[2];
          const bool in = conv_inside(g, id, ih, iw);
          if (in) {
            const int64_t base = (((n * g.in[0] + id) * g.in[1] + ih) * g.in[2] + iw) * g.C + grp * c.Cg;
            for (int64_t ci = 0; ci < c.Cg; ++ci, ++k) acc += load_x<U>(x, base + ci) * wg[k * c.Ng];
          } else {
            for (int64_t ci = 0; ci < c.Cg; ++ci, ++k) acc += zp * wg[k * c.Ng];
          }
        }
      }
    }
    epilogue_store(e, m, ch, acc, inv);
  }
}

template <bool U>
__global__ void conv_dw_kernel(const void* __restrict__ x, const int8_t* __restrict__ w, ConvDev c,
                               Epilogue e, int64_t total) {
  const ConvGeometry& g = c.g;
  const int32_t zp = clamp_int(e.x_zp[0], e.x_zp_lo, e.x_zp_hi);
  const float inv = epilogue_inv_out_scale(e);
  const int64_t C = g.C;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = idx / C, ch = idx % C;
    int64_t n, od, oh, ow;
    conv_pixel_of(g, m, &n, &od, &oh, &ow);
    int32_t acc = 0;
    int64_t t = 0;
    for (int64_t kd = 0; kd < g.k[0]; ++kd) {
      const int64_t id = od * g.stride[0] - g.pad[0] + kd * g.dil[0];
      for (int64_t kh = 0; kh < g.k[1]; ++kh) {
        const int64_t ih = oh * g.stride[1] - g.pad[1] + kh * g.dil[1];
        for (int64_t kw = 0; kw < g.k[2]; ++kw, ++t) {
          const int64_t iw = ow * g.stride[2] - g.pad[2] + kw * g.dil[2];
          const bool in = conv_inside(g, id, ih, iw);
          const int32_t xv =
              in ? load_x<U>(x, (((n * g.in[0] + id) * g.in[1] + ih) * g.in[2] + iw) * C + ch) : zp;
          acc += xv * w[t * C + ch];
        }
      }
    }
    epilogue_store(e, m, ch, acc, inv);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pack_conv_weight_cuda(const at::Tensor& w, int64_t groups) {
  const ConvSetup s = conv_weight_setup(w, groups);
  c10::cuda::CUDAGuard guard(w.device());
  const int64_t taps = s.g.taps();
  const at::Tensor col_sums = w.reshape({s.Cout, s.Kg}).sum(1, /*keepdim=*/false, at::kInt);
  if (s.depthwise) {
    return {w.reshape({s.Cout, taps}).t().contiguous().view(kernel_shaped(s.nsp, s.g, {}, {s.Cout})), col_sums};
  }
  // [groups, *kernel_size, Cg, Ng]: k = tap * Cg + c, output channel innermost.
  at::Tensor packed = w.reshape({groups, s.Ng, s.Cg, taps}).permute({0, 3, 2, 1}).contiguous();
  return {packed.view(kernel_shaped(s.nsp, s.g, {groups}, {s.Cg, s.Ng})), col_sums};
}

at::Tensor conv_int8_cuda(const at::Tensor& x, const at::Tensor& x_scale,
                          const at::Tensor& x_zero_point, const at::Tensor& w_packed,
                          const at::Tensor& w_col_sums, const at::Tensor& w_scale,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                          int64_t groups, const std::optional<at::Tensor>& out_scale,
                          const std::optional<at::Tensor>& out_zero_point, bool relu,
                          std::optional<at::ScalarType> out_dtype) {
  const ConvSetup s = conv_setup(x, w_col_sums, kernel_size, stride, padding, dilation, groups);
  check_w_packed(x, w_packed, "pack_conv_weight");
  if (s.depthwise) {
    const std::vector<int64_t> want = kernel_shaped(s.nsp, s.g, {}, {s.Cout});
    TORCH_CHECK(w_packed.sizes() == at::IntArrayRef(want),
                "argument 'w_packed' must be the depthwise packing [*kernel_size, C] = ", at::IntArrayRef(want),
                ", got shape ", w_packed.sizes());
  } else {
    const std::vector<int64_t> want = kernel_shaped(s.nsp, s.g, {groups}, {s.Cg, s.Ng});
    TORCH_CHECK(w_packed.sizes() == at::IntArrayRef(want),
                "argument 'w_packed' must be [groups, *kernel_size, Cin/groups, Cout/groups] = ",
                at::IntArrayRef(want), " for this input, kernel_size and groups (pack_conv_weight on CUDA), "
                "got shape ", w_packed.sizes());
  }
  const ChannelQParams q = channel_qparams(x, x_scale, x_zero_point, w_scale, bias, s.Cout, out_scale,
                                           out_zero_point, out_dtype);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = conv_empty_output(s, x.options().dtype(q.odt), false);
  if (out.numel() == 0) return out;
  const at::Tensor xc = conv_channels_last_input(x);
  const bool u = x.scalar_type() == at::kByte;
  Epilogue e = q.epilogue(out, s.Cout, relu);
  e.col_sums = w_col_sums.data_ptr<int32_t>();
  e.x_zp = q.xz.data_ptr<int32_t>();
  e.x_zp_lo = u ? 0 : -128;
  e.x_zp_hi = u ? 255 : 127;
  ConvDev c;
  c.g = s.g;
  c.Cout = s.Cout;
  c.Cg = s.Cg;
  c.Ng = s.Ng;
  c.Kg = s.Kg;
  const int64_t total = s.g.out_pixels() * s.Cout;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  const unsigned grid = grid_for(total);
  const void* px = xc.data_ptr();
  const int8_t* pw = w_packed.data_ptr<int8_t>();
  // (the path is read, and a bad TORCHQUANT_CUDA_CONV refused, for depthwise layers too)
  const ConvPath path = conv_path();
  if (!s.depthwise && path == ConvPath::Mma) {
    ConvMmaArgs a;
    a.g = s.g;
    a.groups = groups;
    a.Cg = s.Cg;
    a.Ng = s.Ng;
    a.Kg = s.Kg;
    if (conv_mma_applies(a)) {
      launch_conv_mma(px, u, pw, a, e, stream);
      return out;
    }
  }
  if (s.depthwise) {
    if (u) {
      conv_dw_kernel<true><<<grid, kThreads, 0, stream>>>(px, pw, c, e, total);
    } else {
      conv_dw_kernel<false><<<grid, kThreads, 0, stream>>>(px, pw, c, e, total);
    }
  } else if (u) {
    conv_general_kernel<true><<<grid, kThreads, 0, stream>>>(px, pw, c, e, total);
  } else {
    conv_general_kernel<false><<<grid, kThreads, 0, stream>>>(px, pw, c, e, total);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY_IMPL(torchquant, CUDA, m) {
  m.impl("pack_conv_weight", &pack_conv_weight_cuda);
  m.impl("conv_int8", &conv_int8_cuda);
}

}  // namespace cuda
}  // namespace torchquant
