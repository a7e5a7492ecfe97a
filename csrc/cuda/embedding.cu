// CUDA row-wise quantized embedding bag (embedding_bag_rowwise): one block per bag, one thread
// per column, the one-element formulas of csrc/cpu/embedding_kernels.h in the same order, each
// operation written with its rounding (__fmaf_rn where the contract has an fma, __fadd_rn /
// __fmul_rn elsewhere, and -fmad=false), so results equal the CPU's bit for bit.
//
// Index and offset values are checked on the host before the kernel runs (a copy of indices and
// offsets to the host, so a device sync): an out-of-range index is a clear error, never a read
// outside the table.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/common.cuh"
#include "ops.h"

namespace torchquant {
namespace cuda {
namespace {

__device__ __forceinline__ int row_value_dev(const uint8_t* row, int64_t d, int bits) {
  if (bits == 8) return row[d];
  const uint8_t b = row[d >> 1];
  return (d & 1) ? (b >> 4) : (b & 0x0F);
}

__global__ void embedding_bag_kernel(const uint8_t* __restrict__ table, int64_t row_stride, int64_t dim,
                                     int bits, const int64_t* __restrict__ idx, int64_t n,
                                     const int64_t* __restrict__ off, int64_t n_off, int64_t fixed,
                                     const float* __restrict__ weights, int64_t padding_idx, int mode,
                                     int64_t bags, float* __restrict__ out) {
  // Bags blockIdx.x, + gridDim.x, ...: the host caps the grid at 2^31 - 1 blocks (gridDim.x's limit).
  for (int64_t b = blockIdx.x; b < bags; b += gridDim.x) {
    int64_t s, e;
    if (off != nullptr) {
      s = off[b];
      e = b + 1 < n_off ? off[b + 1] : n;
    } else {
      s = b * fixed;
      e = s + fixed;
    }
    const int64_t qp = row_stride - 8;
    const bool biased = bits == 8 && mode != 2;  // 8-bit sum / mean: fma(q, s', acc), biases summed apart
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      float acc = 0.0f, bias = 0.0f;
      int64_t count = 0;
      for (int64_t i = s; i < e; ++i) {
        const int64_t r = idx[i];
        if (r == padding_idx) continue;
        const uint8_t* row = table + r * row_stride;
        float sc = *reinterpret_cast<const float*>(row + qp);
        const float zp = *reinterpret_cast<const float*>(row + qp + 4);
        const float q = static_cast<float>(row_value_dev(row, d, bits));
        if (bits == 8) {
          float bi = -__fmul_rn(zp, sc);
          if (mode == 2) {
            const float v = __fmaf_rn(q, sc, bi);
            acc = (count == 0 || v > acc) ? v : acc;
          } else {
            if (weights != nullptr) {
              sc = __fmul_rn(sc, weights[i]);
              bi = __fmul_rn(bi, weights[i]);
            }
            bias = __fadd_rn(bias, bi);
            acc = __fmaf_rn(q, sc, acc);
          }
        } else {
          float v = __fmul_rn(__fsub_rn(q, zp), sc);
          if (mode == 2) {
            acc = (count == 0 || v > acc) ? v : acc;
          } else {
            if (weights != nullptr) v = __fmul_rn(v, weights[i]);
            acc = __fadd_rn(acc, v);
          }
        }
        ++count;
      }
      if (biased) acc = __fadd_rn(acc, bias);
      if (mode == 1 && count > 0) acc = __fdiv_rn(acc, static_cast<float>(count));
      out[b * dim + d] = acc;
    }
  }
}

}  // namespace
}  // namespace cuda

Tensor embedding_bag_rowwise_cuda(const Tensor& packed, int64_t bits, int64_t embedding_dim,
                                  const Tensor& indices, const std::optional<Tensor>& offsets,
                                  int64_t mode, const std::optional<Tensor>& per_sample_weights,
                                  bool include_last_offset, std::optional<int64_t> padding_idx) {
  const EmbeddingBagArgs a = check_embedding_bag_args(packed, bits, embedding_dim, indices, offsets, mode,
                                                      per_sample_weights, include_last_offset, padding_idx);
  const c10::cuda::CUDAGuard guard(packed.device());
  const Tensor idx = indices.to(at::kLong).contiguous();
  Tensor off;
  if (offsets.has_value()) off = offsets->to(at::kLong).contiguous();
  {
    const Tensor idx_h = idx.cpu();
    const Tensor off_h = off.defined() ? off.cpu() : Tensor();
    check_embedding_bag_values(idx_h.data_ptr<int64_t>(), a.n, off_h.defined() ? off_h.data_ptr<int64_t>() : nullptr,
                               off_h.defined() ? off_h.numel() : 0, a.N);
  }
  Tensor out = at::empty({a.bags, embedding_dim}, packed.options().dtype(at::kFloat));
  if (a.bags == 0 || embedding_dim == 0) return out;
  // The kernel reads each row's scale and zero point as float32 loads at byte offset
  // row_stride - 8 (row_stride is a multiple of 4): the table's data must start 4-byte aligned.
  // A contiguous view starting elsewhere (an offset into a larger uint8 buffer) is copied once.
  Tensor table = packed.contiguous();
  if (reinterpret_cast<uintptr_t>(table.const_data_ptr()) % alignof(float) != 0) {
    table = table.clone(at::MemoryFormat::Contiguous);
  }
  Tensor w;
  if (per_sample_weights.has_value()) w = per_sample_weights->contiguous();
  const int threads = static_cast<int>(std::min<int64_t>(256, (embedding_dim + 31) / 32 * 32));
  auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(a.bags, 0x7FFFFFFF));
  cuda::embedding_bag_kernel<<<blocks, threads, 0, stream>>>(
      table.data_ptr<uint8_t>(), a.row_stride, embedding_dim, static_cast<int>(bits), idx.data_ptr<int64_t>(), a.n,
      off.defined() ? off.data_ptr<int64_t>() : nullptr, off.defined() ? off.numel() : 0,
      off.defined() ? 0 : (a.bags ? a.n / a.bags : 0), w.defined() ? w.data_ptr<float>() : nullptr, a.padding_idx,
      static_cast<int>(mode), a.bags, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY_IMPL(torchquant, CUDA, m) { m.impl("embedding_bag_rowwise", &embedding_bag_rowwise_cuda); }

}  // namespace torchquant
