// Scalar quantization math shared by every backend (host and device).
//
// These one-element functions are the oracle that every SIMD and CUDA variant
// must reproduce bit for bit. They follow torch's fake-quant formula:
//   q = clamp(nearbyint(x * inv_scale) + zero_point, qmin, qmax),  inv_scale = 1.0f / scale
// computed in float32 with no fused multiply-add (the build passes -ffp-contract=off).
//
// Defined behaviour for non-finite input (documented in docs/quantization.md):
//   +-Inf and values past the range saturate to qmax / qmin;
//   NaN quantizes to zero_point (so it dequantizes to 0.0), and fake_quantize returns NaN
//   unchanged so that a diverging QAT run stays visible.
// No float is ever cast to an integer before it has been clamped into [qmin, qmax]
// (such a cast is undefined behaviour in C++ for NaN and out-of-range values).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TQ_HD __host__ __device__ __forceinline__
#else
#define TQ_HD inline
#endif

namespace torchquant {

// Returns the quantized value as a float holding an integer in [qmin, qmax].
TQ_HD float quantize_val(float x, float inv_scale, float zero_point, float qmin, float qmax) {
  float t = nearbyintf(x * inv_scale) + zero_point;
  t = t < qmin ? qmin : t;  // NaN compares false and passes through both clamps
  t = t > qmax ? qmax : t;
  return t != t ? zero_point : t;
}

TQ_HD float dequantize_val(int32_t q, float scale, int32_t zero_point) {
  // q - zero_point is an exact integer in float; one rounding, the product's.
  return static_cast<float>(q - zero_point) * scale;
}

TQ_HD float fake_quantize_val(float x, float scale, float inv_scale, float zero_point, float qmin,
                              float qmax) {
  if (x != x) return x;
  return (quantize_val(x, inv_scale, zero_point, qmin, qmax) - zero_point) * scale;
}

// Straight-through estimator mask: 1 where the rounded value lies inside [qmin, qmax].
TQ_HD bool fake_quantize_mask(float x, float inv_scale, float zero_point, float qmin, float qmax) {
  float t = nearbyintf(x * inv_scale) + zero_point;
  return t >= qmin && t <= qmax;  // false for NaN
}

}  // namespace torchquant
