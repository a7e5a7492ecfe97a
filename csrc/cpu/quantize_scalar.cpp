// Scalar quantize kernels: plain loops over the one-element oracle in common/quant_math.h.
#include "common/quant_math.h"
#include "cpu/quantize_kernels.h"

namespace torchquant {
namespace cpu {
namespace {

inline void store(void* q, int64_t i, float v, bool is_unsigned) {
  // v is an integer already clamped into [qmin, qmax] inside the storage type: the cast is exact.
  if (is_unsigned) {
    static_cast<uint8_t*>(q)[i] = static_cast<uint8_t>(static_cast<int32_t>(v));
  } else {
    static_cast<int8_t*>(q)[i] = static_cast<int8_t>(static_cast<int32_t>(v));
  }
}

inline int32_t load(const void* q, int64_t i, bool is_unsigned) {
  return is_unsigned ? static_cast<int32_t>(static_cast<const uint8_t*>(q)[i])
                     : static_cast<int32_t>(static_cast<const int8_t*>(q)[i]);
}

}  // namespace

void quantize_pt__scalar(const float* x, void* q, int64_t n, float inv_scale, int32_t zp,
                         int32_t qmin, int32_t qmax, bool is_unsigned) {
  const float fzp = static_cast<float>(zp), fmin = static_cast<float>(qmin),
              fmax = static_cast<float>(qmax);
  for (int64_t i = 0; i < n; ++i) store(q, i, quantize_val(x[i], inv_scale, fzp, fmin, fmax), is_unsigned);
}

void quantize_pc__scalar(const float* x, void* q, int64_t n, const float* inv_scale,
                         const int32_t* zp, int32_t qmin, int32_t qmax, bool is_unsigned) {
  const float fmin = static_cast<float>(qmin), fmax = static_cast<float>(qmax);
  for (int64_t i = 0; i < n; ++i) {
    store(q, i, quantize_val(x[i], inv_scale[i], static_cast<float>(zp[i]), fmin, fmax), is_unsigned);
  }
}

void dequantize_pt__scalar(const void* q, float* y, int64_t n, float scale, int32_t zp,
                           bool is_unsigned) {
  for (int64_t i = 0; i < n; ++i) y[i] = dequantize_val(load(q, i, is_unsigned), scale, zp);
}

void dequantize_pc__scalar(const void* q, float* y, int64_t n, const float* scale,
                           const int32_t* zp, bool is_unsigned) {
  for (int64_t i = 0; i < n; ++i) y[i] = dequantize_val(load(q, i, is_unsigned), scale[i], zp[i]);
}

void fake_quantize_pt__scalar(const float* x, float* y, int64_t n, float scale, float inv_scale,
                              int32_t zp, int32_t qmin, int32_t qmax) {
  const float fzp = static_cast<float>(zp), fmin = static_cast<float>(qmin),
              fmax = static_cast<float>(qmax);
  for (int64_t i = 0; i < n; ++i) y[i] = fake_quantize_val(x[i], scale, inv_scale, fzp, fmin, fmax);
}

void fake_quantize_pc__scalar(const float* x, float* y, int64_t n, const float* scale,
                              const float* inv_scale, const int32_t* zp, int32_t qmin,
                              int32_t qmax) {
  const float fmin = static_cast<float>(qmin), fmax = static_cast<float>(qmax);
  for (int64_t i = 0; i < n; ++i) {
    y[i] = fake_quantize_val(x[i], scale[i], inv_scale[i], static_cast<float>(zp[i]), fmin, fmax);
  }
}

void fake_quantize_grad_pt__scalar(const float* dy, const float* x, float* dx, int64_t n,
                                   float inv_scale, int32_t zp, int32_t qmin, int32_t qmax) {
  const float fzp = static_cast<float>(zp), fmin = static_cast<float>(qmin),
              fmax = static_cast<float>(qmax);
  for (int64_t i = 0; i < n; ++i) {
    dx[i] = fake_quantize_mask(x[i], inv_scale, fzp, fmin, fmax) ? dy[i] : 0.0f;
  }
}

void fake_quantize_grad_pc__scalar(const float* dy, const float* x, float* dx, int64_t n,
                                   const float* inv_scale, const int32_t* zp, int32_t qmin,
                                   int32_t qmax) {
  const float fmin = static_cast<float>(qmin), fmax = static_cast<float>(qmax);
  for (int64_t i = 0; i < n; ++i) {
    dx[i] = fake_quantize_mask(x[i], inv_scale[i], static_cast<float>(zp[i]), fmin, fmax) ? dy[i]
                                                                                           : 0.0f;
  }
}

}  // namespace cpu
}  // namespace torchquant
