// AVX-512 epilogue of the int8 transposed convolution: gemm_avx512.cpp's epilogue sequence (the
// float32 operations of gemm_epilogue_one in the same order, no FMA) on sums that are already
// zero-point corrected; a last chunk of fewer than 16 columns runs under a lane mask.
#include <immintrin.h>

#include "cpu/conv_transpose_kernels.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
TQ_TARGET_AVX512VNNI void conv_transpose_epilogue__avx512vnni(const GemmProblem& p,
                                                              const int32_t* acc, int64_t lda,
                                                              int64_t rows, int64_t n) {
  const __m512 vas = _mm512_set1_ps(p.a_scale), zero = _mm512_setzero_ps();
  const bool u8 = p.out_kind == GemmOut::QUInt8;
  const __m512 inv = _mm512_set1_ps(p.out_inv_scale),
               ozp = _mm512_set1_ps(static_cast<float>(p.out_zp)),
               lo = _mm512_set1_ps(u8 ? 0.0f : -128.0f), hi = _mm512_set1_ps(u8 ? 255.0f : 127.0f);
  for (int64_t m = 0; m < rows; ++m) {
    const int32_t* a = acc + m * lda;
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 k =
          n - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1u);
      const int64_t o = m * p.ldo + j;
      const __m512i corr = _mm512_maskz_loadu_epi32(k, a + j);
      if (p.out_kind == GemmOut::Int32) {
        _mm512_mask_storeu_epi32(static_cast<int32_t*>(p.out) + o, k, corr);
        continue;
      }
      const __m512 s = _mm512_mul_ps(vas, _mm512_maskz_loadu_ps(k, p.w_scale + j));
      __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), s);
      if (p.bias != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(k, p.bias + j));
      if (p.relu) y = _mm512_max_ps(zero, y);  // 0 > y ? 0 : y: NaN and -0 pass through
      if (p.out_kind == GemmOut::Float) {
        _mm512_mask_storeu_ps(static_cast<float*>(p.out) + o, k, y);
        continue;
      }
      // quantize_val: round half to even, clamp, NaN -> zp.
      __m512 t = _mm512_add_ps(
          _mm512_roundscale_ps(_mm512_mul_ps(y, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
          ozp);
      if (p.nan_free) {
        t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
      } else {
        const __mmask16 nan = _mm512_cmp_ps_mask(t, t, _CMP_UNORD_Q);
        t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
        t = _mm512_mask_blend_ps(nan, t, ozp);
      }
      // Integer-valued and inside the 8-bit type: the conversion and the truncating pack are exact.
      _mm512_mask_cvtepi32_storeu_epi8(static_cast<uint8_t*>(p.out) + o, k, _mm512_cvtps_epi32(t));
    }
  }
}
#else
void conv_transpose_epilogue__avx512vnni(const GemmProblem& p, const int32_t* acc, int64_t lda,
                                         int64_t rows, int64_t n) {
  conv_transpose_epilogue__scalar(p, acc, lda, rows, n);
}
#endif

}  // namespace cpu
}  // namespace torchquant
