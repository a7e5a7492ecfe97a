// The int8 GEMM of the CUDA backend: shared by gemm.cu (ops, dispatch, the tiled kernel and
// the epilogue), gemv.cu (small M) and gemm_lt.cu (cuBLASLt).
//
// Operands, whatever the path:
//   X: int8 [M, ldx] row-major, 16-byte aligned, ldx % 16 == 0, columns [0, Kp) readable.
//      When X_XOR is set the bytes are uint8 activations and the kernel flips their top bit,
//      i.e. reads x - 128 as int8 (exact); the epilogue's zero point correction adds the 128 back.
//   W: int8 [N, ldw] row-major (the packed weight: nn.Linear's [N, K] padded with zeros to
//      Kp = round_up(K, 16) columns), 16-byte aligned, ldw % 16 == 0.
//   acc[m, n] = sum_{k < Kp} X[m, k] * W[n, k]: the zero columns of W make X's padding inert.
//
// The epilogue is the requantize contract shared with the CPU kernels (see docs/cuda.md), the
// same device function on every path so that every path gives the same bits.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/quant_math.h"

namespace torchquant {
namespace cuda {

constexpr int64_t kKAlign = 16;  // K padding of packed weights and prepared activations

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

enum class OutKind : int { Int32 = 0, Float = 1, BFloat16 = 2, Half = 3, Int8 = 4, UInt8 = 5 };

struct Epilogue {
  OutKind kind = OutKind::Int32;
  void* out = nullptr;
  int64_t ldo = 0;                      // row stride of out, in elements
  const int32_t* col_sums = nullptr;    // [N], sum_k W[n, k]
  const int32_t* x_zp = nullptr;        // activation zero point(s), [1] or [M]
  bool x_zp_per_row = false;
  int32_t x_zp_lo = -128, x_zp_hi = 127;  // clamp of x_zp (device values are not validated)
  int32_t zp_shift = 0;                 // 128 when uint8 activations were read as x - 128
  const float* x_scale = nullptr;       // [1] or [M]
  bool x_scale_per_row = false;
  const float* w_scale = nullptr;       // [N]
  const float* bias = nullptr;          // [N] or null
  bool relu = false;
  const float* out_scale = nullptr;     // [1], Int8 / UInt8 out
  const int32_t* out_zp = nullptr;      // [1], Int8 / UInt8 out
};

__device__ __forceinline__ int32_t clamp_int(int32_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// The requantize contract, one output element:
//   corr = acc - x_zp * col_sums[n]                       (int32, exact for K <= kMaxK)
//   y = (float)corr * (x_scale * w_scale[n])              (the product of scales first, float32)
//   y = y + bias[n]; y = max(y, 0) if relu
//   float out: y; int8/uint8 out: clamp(nearbyint(y * (1.0f / out_scale)) + out_zp, full range).
// With uint8 activations read as x - 128, acc' = acc - 128 * col_sums, so
// corr = acc' - (x_zp - 128) * col_sums: the same integer.
// 1 / out_scale, the same float whether computed once per thread or per element.
__device__ __forceinline__ float epilogue_inv_out_scale(const Epilogue& e) {
  return (e.kind == OutKind::Int8 || e.kind == OutKind::UInt8) ? 1.0f / e.out_scale[0] : 0.0f;
}

__device__ __forceinline__ void epilogue_store(const Epilogue& e, int64_t m, int64_t n,
                                               int32_t acc, float inv_out_scale) {
  const int64_t o = m * e.ldo + n;
  if (e.kind == OutKind::Int32) {
    static_cast<int32_t*>(e.out)[o] = acc;
    return;
  }
  const int32_t zp =
      clamp_int(e.x_zp[e.x_zp_per_row ? m : 0], e.x_zp_lo, e.x_zp_hi) - e.zp_shift;
  // In int64 so that no intermediate can overflow; the result fits int32 (K <= kMaxK).
  const int32_t corr = static_cast<int32_t>(static_cast<int64_t>(acc) -
                                            static_cast<int64_t>(zp) * e.col_sums[n]);
  const float s = e.x_scale[e.x_scale_per_row ? m : 0] * e.w_scale[n];
  float y = static_cast<float>(corr) * s;
  if (e.bias != nullptr) y = y + e.bias[n];
  if (e.relu) y = y < 0.0f ? 0.0f : y;  // std::max(y, 0.0f): NaN stays NaN
  switch (e.kind) {
    case OutKind::Float:
      static_cast<float*>(e.out)[o] = y;
      break;
    case OutKind::BFloat16:
      static_cast<__nv_bfloat16*>(e.out)[o] = __float2bfloat16_rn(y);
      break;
    case OutKind::Half:
      static_cast<__half*>(e.out)[o] = __float2half_rn(y);
      break;
    default: {
      const bool u = e.kind == OutKind::UInt8;
      const int32_t qmin = u ? 0 : -128, qmax = u ? 255 : 127;
      const float inv = inv_out_scale;
      const float ozp = static_cast<float>(clamp_int(e.out_zp[0], qmin, qmax));
      const float q = quantize_val(y, inv, ozp, static_cast<float>(qmin), static_cast<float>(qmax));
      // q is an integer inside the output type's range: the casts are exact.
      static_cast<uint8_t*>(e.out)[o] = static_cast<uint8_t>(static_cast<int32_t>(q));
    }
  }
}

__device__ __forceinline__ void epilogue_store(const Epilogue& e, int64_t m, int64_t n,
                                               int32_t acc) {
  epilogue_store(e, m, n, acc, epilogue_inv_out_scale(e));
}

struct GemmProblem {
  const int8_t* x = nullptr;
  int64_t ldx = 0;
  bool x_xor = false;
  const int8_t* w = nullptr;
  int64_t ldw = 0;
  int64_t M = 0, N = 0, Kp = 0;
};

// gemv.cu: M <= kGemvMaxM, epilogue fused. Handles x_xor.
constexpr int64_t kGemvMaxM = 32;
void launch_gemv(const GemmProblem& p, const Epilogue& e, cudaStream_t stream);

// gemv.cu: M <= kMmaMaxM on the tensor cores (mma.sync), epilogue fused. Handles x_xor.
// Needs compute capability 8.0 (mma_supported()).
constexpr int64_t kMmaMaxM = 64;
bool mma_supported();
void launch_gemv_mma(const GemmProblem& p, const Epilogue& e, cudaStream_t stream);

// gemm.cu: any shape, epilogue fused. Requires !x_xor.
void launch_gemm_tiled(const GemmProblem& p, const Epilogue& e, cudaStream_t stream);

// gemm_lt.cu: int32 D [M, ldd] = X W^T with cuBLASLt IMMA. Requires !x_xor. Returns false
// (having launched nothing) when cuBLASLt offers no algorithm for the problem.
bool lt_gemm_s32(const GemmProblem& p, int32_t* d, int64_t ldd, cudaStream_t stream);

}  // namespace cuda
}  // namespace torchquant
