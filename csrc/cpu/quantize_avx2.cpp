// AVX2 quantize kernels. Same signatures and the same float32 steps as quantize_scalar.cpp,
// so results are bit-identical:
// - x * inv_scale is one IEEE multiply in both; the build uses -ffp-contract=off, and no FMA
//   intrinsic is used here, so nothing is fused.
// - _mm256_round_ps(_MM_FROUND_TO_NEAREST_INT) rounds half to even, as nearbyintf does in the
//   default rounding mode.
// - _mm256_max_ps(t, qmin) returns its second operand when t is NaN; the NaN lanes are then
//   replaced by the zero point from a mask taken before the clamps, which is what the scalar
//   oracle does. After the clamps every lane holds an integer in [qmin, qmax], so
//   _mm256_cvtps_epi32 is exact and the int16/int8 packs never saturate.
// Tails shorter than a vector go through the scalar oracle.
#include <immintrin.h>

#include "common/quant_math.h"
#include "cpu/isa.h"
#include "cpu/quantize_kernels.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

TQ_TARGET_AVX2 inline __m256 quantize8(__m256 x, __m256 inv, __m256 zp, __m256 lo, __m256 hi) {
  __m256 t = _mm256_add_ps(
      _mm256_round_ps(_mm256_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zp);
  const __m256 nan = _mm256_cmp_ps(t, t, _CMP_UNORD_Q);
  t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
  return _mm256_blendv_ps(t, zp, nan);
}

// Packs four vectors of integer-valued floats, already inside the storage type, into 32 bytes.
TQ_TARGET_AVX2 inline void store32(void* dst, __m256 a, __m256 b, __m256 c, __m256 d,
                                   bool is_unsigned) {
  const __m256i ab = _mm256_packs_epi32(_mm256_cvtps_epi32(a), _mm256_cvtps_epi32(b));
  const __m256i cd = _mm256_packs_epi32(_mm256_cvtps_epi32(c), _mm256_cvtps_epi32(d));
  const __m256i bytes = is_unsigned ? _mm256_packus_epi16(ab, cd) : _mm256_packs_epi16(ab, cd);
  // The packs interleave the two 128-bit lanes; put the 4-byte groups back in order.
  const __m256i ordered =
      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(static_cast<__m256i*>(dst), ordered);
}

TQ_TARGET_AVX2 inline __m256 quantize8_pc(const float* x, const float* inv, const int32_t* zp,
                                          int64_t j, __m256 lo, __m256 hi) {
  const __m256 z = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(zp + j)));
  return quantize8(_mm256_loadu_ps(x + j), _mm256_loadu_ps(inv + j), z, lo, hi);
}

TQ_TARGET_AVX2 inline __m256i load8_int32(const void* q, bool is_unsigned) {
  const __m128i b = _mm_loadl_epi64(static_cast<const __m128i*>(q));
  return is_unsigned ? _mm256_cvtepu8_epi32(b) : _mm256_cvtepi8_epi32(b);
}

}  // namespace

TQ_TARGET_AVX2 void quantize_pt__avx2(const float* x, void* q, int64_t n, float inv_scale,
                                      int32_t zp, int32_t qmin, int32_t qmax, bool is_unsigned) {
  const __m256 inv = _mm256_set1_ps(inv_scale), z = _mm256_set1_ps(static_cast<float>(zp)),
               lo = _mm256_set1_ps(static_cast<float>(qmin)),
               hi = _mm256_set1_ps(static_cast<float>(qmax));
  auto* out = static_cast<uint8_t*>(q);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    store32(out + i, quantize8(_mm256_loadu_ps(x + i), inv, z, lo, hi),
            quantize8(_mm256_loadu_ps(x + i + 8), inv, z, lo, hi),
            quantize8(_mm256_loadu_ps(x + i + 16), inv, z, lo, hi),
            quantize8(_mm256_loadu_ps(x + i + 24), inv, z, lo, hi), is_unsigned);
  }
  quantize_pt__scalar(x + i, out + i, n - i, inv_scale, zp, qmin, qmax, is_unsigned);
}

TQ_TARGET_AVX2 void quantize_pc__avx2(const float* x, void* q, int64_t n, const float* inv_scale,
                                      const int32_t* zp, int32_t qmin, int32_t qmax,
                                      bool is_unsigned) {
  const __m256 lo = _mm256_set1_ps(static_cast<float>(qmin)),
               hi = _mm256_set1_ps(static_cast<float>(qmax));
  auto* out = static_cast<uint8_t*>(q);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    store32(out + i, quantize8_pc(x, inv_scale, zp, i, lo, hi),
            quantize8_pc(x, inv_scale, zp, i + 8, lo, hi),
            quantize8_pc(x, inv_scale, zp, i + 16, lo, hi),
            quantize8_pc(x, inv_scale, zp, i + 24, lo, hi), is_unsigned);
  }
  quantize_pc__scalar(x + i, out + i, n - i, inv_scale + i, zp + i, qmin, qmax, is_unsigned);
}

TQ_TARGET_AVX2 void dequantize_pt__avx2(const void* q, float* y, int64_t n, float scale,
                                        int32_t zp, bool is_unsigned) {
  const __m256 s = _mm256_set1_ps(scale);
  const __m256i z = _mm256_set1_epi32(zp);
  const auto* in = static_cast<const uint8_t*>(q);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i v = _mm256_sub_epi32(load8_int32(in + i, is_unsigned), z);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_cvtepi32_ps(v), s));
  }
  dequantize_pt__scalar(in + i, y + i, n - i, scale, zp, is_unsigned);
}

TQ_TARGET_AVX2 void dequantize_pc__avx2(const void* q, float* y, int64_t n, const float* scale,
                                        const int32_t* zp, bool is_unsigned) {
  const auto* in = static_cast<const uint8_t*>(q);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i z = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(zp + i));
    const __m256i v = _mm256_sub_epi32(load8_int32(in + i, is_unsigned), z);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_loadu_ps(scale + i)));
  }
  dequantize_pc__scalar(in + i, y + i, n - i, scale + i, zp + i, is_unsigned);
}

namespace {
TQ_TARGET_AVX2 inline __m256 fake8(__m256 x, __m256 s, __m256 inv, __m256 z, __m256 lo, __m256 hi) {
  const __m256 y = _mm256_mul_ps(_mm256_sub_ps(quantize8(x, inv, z, lo, hi), z), s);
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN in, NaN out
}
TQ_TARGET_AVX2 inline __m256 grad8(__m256 dy, __m256 x, __m256 inv, __m256 z, __m256 lo, __m256 hi) {
  const __m256 t = _mm256_add_ps(
      _mm256_round_ps(_mm256_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), z);
  const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(t, lo, _CMP_GE_OQ), _mm256_cmp_ps(t, hi, _CMP_LE_OQ));
  return _mm256_and_ps(dy, inside);
}
}  // namespace

TQ_TARGET_AVX2 void fake_quantize_pt__avx2(const float* x, float* y, int64_t n, float scale,
                                           float inv_scale, int32_t zp, int32_t qmin,
                                           int32_t qmax) {
  const __m256 s = _mm256_set1_ps(scale), inv = _mm256_set1_ps(inv_scale),
               z = _mm256_set1_ps(static_cast<float>(zp)),
               lo = _mm256_set1_ps(static_cast<float>(qmin)),
               hi = _mm256_set1_ps(static_cast<float>(qmax));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_ps(y + i, fake8(_mm256_loadu_ps(x + i), s, inv, z, lo, hi));
    _mm256_storeu_ps(y + i + 8, fake8(_mm256_loadu_ps(x + i + 8), s, inv, z, lo, hi));
  }
  fake_quantize_pt__scalar(x + i, y + i, n - i, scale, inv_scale, zp, qmin, qmax);
}

TQ_TARGET_AVX2 void fake_quantize_pc__avx2(const float* x, float* y, int64_t n, const float* scale,
                                           const float* inv_scale, const int32_t* zp,
                                           int32_t qmin, int32_t qmax) {
  const __m256 lo = _mm256_set1_ps(static_cast<float>(qmin)),
               hi = _mm256_set1_ps(static_cast<float>(qmax));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 z = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(zp + i)));
    _mm256_storeu_ps(y + i, fake8(_mm256_loadu_ps(x + i), _mm256_loadu_ps(scale + i),
                                  _mm256_loadu_ps(inv_scale + i), z, lo, hi));
  }
  fake_quantize_pc__scalar(x + i, y + i, n - i, scale + i, inv_scale + i, zp + i, qmin, qmax);
}

TQ_TARGET_AVX2 void fake_quantize_grad_pt__avx2(const float* dy, const float* x, float* dx,
                                                int64_t n, float inv_scale, int32_t zp,
                                                int32_t qmin, int32_t qmax) {
  const __m256 inv = _mm256_set1_ps(inv_scale), z = _mm256_set1_ps(static_cast<float>(zp)),
               lo = _mm256_set1_ps(static_cast<float>(qmin)),
               hi = _mm256_set1_ps(static_cast<float>(qmax));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dx + i, grad8(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(x + i), inv, z, lo, hi));
  }
  fake_quantize_grad_pt__scalar(dy + i, x + i, dx + i, n - i, inv_scale, zp, qmin, qmax);
}

TQ_TARGET_AVX2 void fake_quantize_grad_pc__avx2(const float* dy, const float* x, float* dx,
                                                int64_t n, const float* inv_scale,
                                                const int32_t* zp, int32_t qmin, int32_t qmax) {
  const __m256 lo = _mm256_set1_ps(static_cast<float>(qmin)),
               hi = _mm256_set1_ps(static_cast<float>(qmax));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 z = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(zp + i)));
    _mm256_storeu_ps(dx + i, grad8(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(x + i),
                                   _mm256_loadu_ps(inv_scale + i), z, lo, hi));
  }
  fake_quantize_grad_pc__scalar(dy + i, x + i, dx + i, n - i, inv_scale + i, zp + i, qmin, qmax);
}

#else  // not x86: the dispatcher never selects AVX2; keep the symbols for one signature set.

void quantize_pt__avx2(const float* x, void* q, int64_t n, float a, int32_t z, int32_t lo, int32_t hi, bool u) { quantize_pt__scalar(x, q, n, a, z, lo, hi, u); }
void quantize_pc__avx2(const float* x, void* q, int64_t n, const float* a, const int32_t* z, int32_t lo, int32_t hi, bool u) { quantize_pc__scalar(x, q, n, a, z, lo, hi, u); }
void dequantize_pt__avx2(const void* q, float* y, int64_t n, float s, int32_t z, bool u) { dequantize_pt__scalar(q, y, n, s, z, u); }
void dequantize_pc__avx2(const void* q, float* y, int64_t n, const float* s, const int32_t* z, bool u) { dequantize_pc__scalar(q, y, n, s, z, u); }
void fake_quantize_pt__avx2(const float* x, float* y, int64_t n, float s, float a, int32_t z, int32_t lo, int32_t hi) { fake_quantize_pt__scalar(x, y, n, s, a, z, lo, hi); }
void fake_quantize_pc__avx2(const float* x, float* y, int64_t n, const float* s, const float* a, const int32_t* z, int32_t lo, int32_t hi) { fake_quantize_pc__scalar(x, y, n, s, a, z, lo, hi); }
void fake_quantize_grad_pt__avx2(const float* d, const float* x, float* o, int64_t n, float a, int32_t z, int32_t lo, int32_t hi) { fake_quantize_grad_pt__scalar(d, x, o, n, a, z, lo, hi); }
void fake_quantize_grad_pc__avx2(const float* d, const float* x, float* o, int64_t n, const float* a, const int32_t* z, int32_t lo, int32_t hi) { fake_quantize_grad_pc__scalar(d, x, o, n, a, z, lo, hi); }
#endif

}  // namespace cpu
}  // namespace torchquant
