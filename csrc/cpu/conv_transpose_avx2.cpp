// AVX2 epilogue of the int8 transposed convolution: gemm_avx2.cpp's epilogue sequence (the
// float32 operations of gemm_epilogue_one in the same order, no FMA) on sums that are already
// zero-point corrected; the last n % 8 columns go through the oracle itself.
#include <immintrin.h>

#include "cpu/conv_transpose_kernels.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
TQ_TARGET_AVX2 void conv_transpose_epilogue__avx2(const GemmProblem& p, const int32_t* acc,
                                                  int64_t lda, int64_t rows, int64_t n) {
  const __m256 vas = _mm256_set1_ps(p.a_scale), zero = _mm256_setzero_ps();
  const bool u8 = p.out_kind == GemmOut::QUInt8;
  const __m256 inv = _mm256_set1_ps(p.out_inv_scale),
               ozp = _mm256_set1_ps(static_cast<float>(p.out_zp)),
               lo = _mm256_set1_ps(u8 ? 0.0f : -128.0f), hi = _mm256_set1_ps(u8 ? 255.0f : 127.0f);
  for (int64_t m = 0; m < rows; ++m) {
    const int32_t* a = acc + m * lda;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const int64_t o = m * p.ldo + j;
      const __m256i corr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + j));
      if (p.out_kind == GemmOut::Int32) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<int32_t*>(p.out) + o), corr);
        continue;
      }
      const __m256 s = _mm256_mul_ps(vas, _mm256_loadu_ps(p.w_scale + j));
      __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(corr), s);
      if (p.bias != nullptr) y = _mm256_add_ps(y, _mm256_loadu_ps(p.bias + j));
      if (p.relu) y = _mm256_max_ps(zero, y);  // 0 > y ? 0 : y: NaN and -0 pass through
      if (p.out_kind == GemmOut::Float) {
        _mm256_storeu_ps(static_cast<float*>(p.out) + o, y);
        continue;
      }
      // quantize_val: round half to even, clamp (NaN lanes take the bound), NaN -> zp.
      __m256 t = _mm256_add_ps(
          _mm256_round_ps(_mm256_mul_ps(y, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), ozp);
      const __m256 nan = _mm256_cmp_ps(t, t, _CMP_UNORD_Q);
      t = _mm256_blendv_ps(_mm256_min_ps(_mm256_max_ps(t, lo), hi), ozp, nan);
      // Integers inside the 8-bit type: conversion and both packs are exact.
      const __m256i q = _mm256_cvtps_epi32(t);
      const __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
      const __m128i bytes = u8 ? _mm_packus_epi16(h, h) : _mm_packs_epi16(h, h);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(static_cast<uint8_t*>(p.out) + o), bytes);
    }
    for (; j < n; ++j) gemm_epilogue_one(p, m, j, a[j], p.a_scale);
  }
}
#else
void conv_transpose_epilogue__avx2(const GemmProblem& p, const int32_t* acc, int64_t lda,
                                   int64_t rows, int64_t n) {
  conv_transpose_epilogue__scalar(p, acc, lda, rows, n);
}
#endif

}  // namespace cpu
}  // namespace torchquant
