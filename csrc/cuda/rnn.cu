// CUDA fused recurrent-cell updates (lstm_cell_update, gru_cell_update): one thread per
// (batch row, unit), the formulas of csrc/cpu/rnn_kernels.h with expf / tanhf (built with
// -fmad=false, so the additions and products round as written). Current stream, no sync.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/common.cuh"
#include "ops.h"

namespace torchquant {
namespace cuda {
namespace {

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void lstm_cell_kernel(const float* __restrict__ ig, const float* __restrict__ hg,
                                 const float* __restrict__ c, float* __restrict__ h_out,
                                 float* __restrict__ c_out, int64_t B, int64_t H) {
  const int64_t n = B * H;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = t / H, j = t - b * H;
    const float* gi = ig + b * 4 * H;
    const float* gh = hg + b * 4 * H;
    const float i = sigmoidf_(gi[j] + gh[j]);
    const float f = sigmoidf_(gi[H + j] + gh[H + j]);
    const float g = tanhf(gi[2 * H + j] + gh[2 * H + j]);
    const float o = sigmoidf_(gi[3 * H + j] + gh[3 * H + j]);
    const float cy = f * c[t] + i * g;
    c_out[t] = cy;
    h_out[t] = o * tanhf(cy);
  }
}

__global__ void gru_cell_kernel(const float* __restrict__ ig, const float* __restrict__ hg,
                                const float* __restrict__ h, float* __restrict__ h_out, int64_t B,
                                int64_t H) {
  const int64_t n = B * H;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = t / H, j = t - b * H;
    const float* gi = ig + b * 3 * H;
    const float* gh = hg + b * 3 * H;
    const float r = sigmoidf_(gi[j] + gh[j]);
    const float z = sigmoidf_(gi[H + j] + gh[H + j]);
    const float nn = tanhf(gi[2 * H + j] + r * gh[2 * H + j]);
    h_out[t] = (h[t] - nn) * z + nn;
  }
}

}  // namespace
}  // namespace cuda

std::tuple<Tensor, Tensor> lstm_cell_update_cuda(const Tensor& igates, const Tensor& hgates,
                                                 const Tensor& c) {
  const auto [B, H] = check_cell_update_args(igates, hgates, c, 4, "c", "lstm_cell_update");
  const c10::cuda::CUDAGuard guard(c.device());
  const Tensor ig = igates.contiguous(), hg = hgates.contiguous(), cx = c.contiguous();
  Tensor h_out = at::empty({B, H}, c.options());
  Tensor c_out = at::empty({B, H}, c.options());
  if (B * H == 0) return {h_out, c_out};
  auto stream = c10::cuda::getCurrentCUDAStream();
  cuda::lstm_cell_kernel<<<cuda::grid_for(B * H), cuda::kThreads, 0, stream>>>(
      ig.data_ptr<float>(), hg.data_ptr<float>(), cx.data_ptr<float>(), h_out.data_ptr<float>(),
      c_out.data_ptr<float>(), B, H);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {h_out, c_out};
}

Tensor gru_cell_update_cuda(const Tensor& igates, const Tensor& hgates, const Tensor& h) {
  const auto [B, H] = check_cell_update_args(igates, hgates, h, 3, "h", "gru_cell_update");
  const c10::cuda::CUDAGuard guard(h.device());
  const Tensor ig = igates.contiguous(), hg = hgates.contiguous(), hx = h.contiguous();
  Tensor h_out = at::empty({B, H}, h.options());
  if (B * H == 0) return h_out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  cuda::gru_cell_kernel<<<cuda::grid_for(B * H), cuda::kThreads, 0, stream>>>(
      ig.data_ptr<float>(), hg.data_ptr<float>(), hx.data_ptr<float>(), h_out.data_ptr<float>(), B,
      H);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return h_out;
}

TORCH_LIBRARY_IMPL(torchquant, CUDA, m) {
  m.impl("lstm_cell_update", &lstm_cell_update_cuda);
  m.impl("gru_cell_update", &gru_cell_update_cuda);
}

}  // namespace torchquant
