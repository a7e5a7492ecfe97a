// CUDA int8 transposed convolution: a direct kernel, one thread per output element, that
// gathers the input pixels and taps reaching it (o = i * stride - padding + tap * dilation),
// reads the channels-last activations in place, sums (x - zp) * w exactly in int32 and ends in
// the GEMM's epilogue_store (gemm.cuh), the same device function as conv_int8's and
// linear_int8's, so the results equal the CPU's bit for bit. The packed weight is [groups,
// *kernel_size, Cin / groups, Cout / groups]: consecutive threads take consecutive output channels of
// one pixel, so their weight reads are contiguous and their activation reads one broadcast.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/conv_checks.h"
#include "common/conv_transpose_checks.h"
#include "cuda/common.cuh"
#include "cuda/args.h"
#include "cuda/gemm.cuh"

namespace torchquant {
namespace cuda {
namespace {

struct ConvTDev {
  ConvGeometry g;
  int64_t Cout = 0, Cg = 0, Ng = 0;
};

template <bool U>
__device__ __forceinline__ int32_t load_xt(const void* x, int64_t at) {
  return U ? int32_t{static_cast<const uint8_t*>(x)[at]} : int32_t{static_cast<const int8_t*>(x)[at]};
}

// The input index i with i * stride - pad + k * dil = o, or -1 when there is none in [0, in).
__device__ __forceinline__ int64_t source_of(int64_t o, int64_t k, int64_t stride, int64_t pad,
                                             int64_t dil, int64_t in) {
  const int64_t t = o + pad - k * dil;
  if (t < 0 || t % stride != 0) return -1;
  const int64_t i = t / stride;
  return i < in ? i : -1;
}

template <bool U>
__global__ void conv_transpose_kernel(const void* __restrict__ x, const int8_t* __restrict__ w,
                                      const int32_t* __restrict__ x_zp, int32_t zp_lo, int32_t zp_hi,
                                      ConvTDev c, Epilogue e, int64_t total) {
  const ConvGeometry& g = c.g;
  const int32_t zp = clamp_int(x_zp[0], zp_lo, zp_hi);
  const float inv = epilogue_inv_out_scale(e);
  const int64_t taps = g.k[0] * g.k[1] * g.k[2];
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = idx / c.Cout, ch = idx % c.Cout, grp = ch / c.Ng, j = ch % c.Ng;
    const int64_t ow = m % g.out[2], oh = (m / g.out[2]) % g.out[1];
    const int64_t od = (m / (g.out[2] * g.out[1])) % g.out[0];
    const int64_t n = m / (g.out[2] * g.out[1] * g.out[0]);
    const int8_t* wg = w + grp * taps * c.Cg * c.Ng + j;
    int32_t acc = 0;
    for (int64_t kd = 0; kd < g.k[0]; ++kd) {
      const int64_t id = source_of(od, kd, g.stride[0], g.pad[0], g.dil[0], g.in[0]);
      if (id < 0) continue;
      for (int64_t kh = 0; kh < g.k[1]; ++kh) {
        const int64_t ih = source_of(oh, kh, g.stride[1], g.pad[1], g.dil[1], g.in[1]);
        if (ih < 0) continue;
        for (int64_t kw = 0; kw < g.k[2]; ++kw) {
          const int64_t iw = source_of(ow, kw, g.stride[2], g.pad[2], g.dil[2], g.in[2]);
          if (iw < 0) continue;
          const int64_t tap = (kd * g.k[1] + kh) * g.k[2] + kw;
          const int64_t base = (((n * g.in[0] + id) * g.in[1] + ih) * g.in[2] + iw) * g.C + grp * c.Cg;
          const int8_t* wt = wg + tap * c.Cg * c.Ng;
          for (int64_t ci = 0; ci < c.Cg; ++ci) acc += (load_xt<U>(x, base + ci) - zp) * wt[ci * c.Ng];
        }
      }
    }
    // acc is already zero-point corrected: the epilogue's correction reads a zero point of 0.
    epilogue_store(e, m, ch, acc, inv);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pack_conv_transpose_weight_cuda(const at::Tensor& w,
                                                                   int64_t groups) {
  const ConvTransposeSetup s = conv_transpose_weight_setup(w, groups);
  c10::cuda::CUDAGuard guard(w.device());
  const int64_t taps = s.g.taps();
  const at::Tensor wr = w.reshape({groups, s.Cg, s.Ng, taps});
  // The CPU's col_sums (sums over the group's input channels, in [groups, kD, Ng / cb, kH * kW,
  // cb] order), for the same values everywhere; the kernel corrects the zero point term by term
  // instead.
  const int64_t cb = std::max<int64_t>(1, s.channel_block());
  const at::Tensor col_sums = wr.sum(1, /*keepdim=*/false, at::kInt)
                                  .reshape({groups, s.Ng / cb, cb, s.g.k[0], s.khw})
                                  .permute({0, 3, 1, 4, 2})
                                  .reshape({-1})
                                  .contiguous();
  return {wr.permute({0, 3, 1, 2}).contiguous().view(kernel_shaped(s.nsp, s.g, {groups}, {s.Cg, s.Ng})), col_sums};
}

at::Tensor conv_transpose_int8_cuda(const at::Tensor& x, const at::Tensor& x_scale,
                                    const at::Tensor& x_zero_point, const at::Tensor& w_packed,
                                    const at::Tensor& w_col_sums, const at::Tensor& w_scale,
                                    const std::optional<at::Tensor>& bias,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef output_padding,
                                    at::IntArrayRef dilation, int64_t groups,
                                    const std::optional<at::Tensor>& out_scale,
                                    const std::optional<at::Tensor>& out_zero_point, bool relu,
                                    std::optional<at::ScalarType> out_dtype) {
  const ConvTransposeSetup s = conv_transpose_setup(x, w_col_sums, kernel_size, stride, padding,
                                                    output_padding, dilation, groups);
  check_w_packed(x, w_packed, "pack_conv_transpose_weight");
  const std::vector<int64_t> want = kernel_shaped(s.nsp, s.g, {groups}, {s.Cg, s.Ng});
  TORCH_CHECK(w_packed.sizes() == at::IntArrayRef(want),
              "argument 'w_packed' must be [groups, *kernel_size, Cin/groups, Cout/groups] = ", at::IntArrayRef(want),
              " for this input, kernel_size and groups (pack_conv_transpose_weight on CUDA), got shape ",
              w_packed.sizes());
  const ChannelQParams q = channel_qparams(x, x_scale, x_zero_point, w_scale, bias, s.Cout, out_scale,
                                           out_zero_point, out_dtype);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = conv_transpose_empty_output(s, x.options().dtype(q.odt), false);
  if (out.numel() == 0) return out;
  const at::Tensor xc = conv_channels_last_input(x);
  const bool u = x.scalar_type() == at::kByte;
  const at::Tensor zero = at::zeros({s.Cout}, x.options().dtype(at::kInt));
  Epilogue e = q.epilogue(out, s.Cout, relu);
  e.col_sums = zero.data_ptr<int32_t>();
  e.x_zp = zero.data_ptr<int32_t>();
  e.x_zp_lo = 0;
  e.x_zp_hi = 0;
  ConvTDev c;
  c.g = s.g;
  c.Cout = s.Cout;
  c.Cg = s.Cg;
  c.Ng = s.Ng;
  const int64_t total = s.g.out_pixels() * s.Cout;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  const unsigned grid = grid_for(total);
  const void* px = xc.data_ptr();
  const int8_t* pw = w_packed.data_ptr<int8_t>();
  const int32_t* pz = q.xz.data_ptr<int32_t>();
  if (u) {
    conv_transpose_kernel<true><<<grid, kThreads, 0, stream>>>(px, pw, pz, 0, 255, c, e, total);
  } else {
    conv_transpose_kernel<false><<<grid, kThreads, 0, stream>>>(px, pw, pz, -128, 127, c, e, total);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY_IMPL(torchquant, CUDA, m) {
  m.impl("pack_conv_transpose_weight", &pack_conv_transpose_weight_cuda);
  m.impl("conv_transpose_int8", &conv_transpose_int8_cuda);
}

}  // namespace cuda
}  // namespace torchquant
