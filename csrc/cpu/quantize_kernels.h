// Raw-pointer kernels for quantize / dequantize / fake-quantize, one signature per kernel,
// declared together for every ISA so that dispatch and tests can swap them freely.
//
// "pt" kernels: n contiguous elements sharing one (scale, zero_point).
// "pc" kernels: n contiguous elements, element i using scale[i], zero_point[i] (the channel
//               axis is the innermost dimension).
// `is_unsigned` selects uint8 (true) or int8 (false) storage for q; [qmin, qmax] must lie
// inside that type. No kernel reads or writes outside [0, n).
#pragma once

#include <cstdint>

namespace torchquant {
namespace cpu {

#define TQ_DECLARE_QUANTIZE_KERNELS(SUFFIX)                                                      \
  void quantize_pt__##SUFFIX(const float* x, void* q, int64_t n, float inv_scale, int32_t zp,   \
                             int32_t qmin, int32_t qmax, bool is_unsigned);                     \
  void quantize_pc__##SUFFIX(const float* x, void* q, int64_t n, const float* inv_scale,        \
                             const int32_t* zp, int32_t qmin, int32_t qmax, bool is_unsigned);  \
  void dequantize_pt__##SUFFIX(const void* q, float* y, int64_t n, float scale, int32_t zp,     \
                               bool is_unsigned);                                               \
  void dequantize_pc__##SUFFIX(const void* q, float* y, int64_t n, const float* scale,          \
                               const int32_t* zp, bool is_unsigned);                            \
  void fake_quantize_pt__##SUFFIX(const float* x, float* y, int64_t n, float scale,             \
                                  float inv_scale, int32_t zp, int32_t qmin, int32_t qmax);     \
  void fake_quantize_pc__##SUFFIX(const float* x, float* y, int64_t n, const float* scale,      \
                                  const float* inv_scale, const int32_t* zp, int32_t qmin,      \
                                  int32_t qmax);                                                \
  void fake_quantize_grad_pt__##SUFFIX(const float* dy, const float* x, float* dx, int64_t n,   \
                                       float inv_scale, int32_t zp, int32_t qmin, int32_t qmax);\
  void fake_quantize_grad_pc__##SUFFIX(const float* dy, const float* x, float* dx, int64_t n,   \
                                       const float* inv_scale, const int32_t* zp, int32_t qmin, \
                                       int32_t qmax);

TQ_DECLARE_QUANTIZE_KERNELS(scalar)
TQ_DECLARE_QUANTIZE_KERNELS(avx2)

#undef TQ_DECLARE_QUANTIZE_KERNELS

}  // namespace cpu
}  // namespace torchquant
