// AVX-512 depthwise int8 convolution: conv_dw_avx2.cpp's loop on 32 channels at a time, with a
// lane mask for the last partial block instead of a scalar tail. Products of an 8-bit activation
// and an int8 weight are exact in int16 (|x * w| <= 32640) and widen into int32 lanes. The
// epilogue repeats gemm_epilogue_one's float32 operations in the same order (no FMA), so the
// outputs are bit-identical to the scalar variant.
#include <immintrin.h>

#include <vector>

#include "cpu/conv_kernels.h"
#include "cpu/isa.h"
#include "cpu/scratch.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

// 16 output channels [c, c + 16) of one pixel (lanes outside `m` untouched).
TQ_TARGET_AVX512VNNI inline void epilogue16(const GemmProblem& e, __m512i acc, int64_t c,
                                            __mmask16 m, void* out) {
  const bool u8 = e.out_kind == GemmOut::QUInt8;
  const __m512i cs = _mm512_maskz_loadu_epi32(m, e.col_sums + c);
  const __m512i corr = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_set1_epi32(e.a_zp), cs));
  const __m512 s = _mm512_mul_ps(_mm512_set1_ps(e.a_scale), _mm512_maskz_loadu_ps(m, e.w_scale + c));
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), s);
  if (e.bias != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, e.bias + c));
  if (e.relu) y = _mm512_max_ps(_mm512_setzero_ps(), y);  // 0 > y ? 0 : y: NaN and -0 pass
  if (e.out_kind == GemmOut::Float) {
    _mm512_mask_storeu_ps(static_cast<float*>(out) + c, m, y);
    return;
  }
  const __m512 inv = _mm512_set1_ps(e.out_inv_scale), ozp = _mm512_set1_ps(static_cast<float>(e.out_zp));
  const __m512 lo = _mm512_set1_ps(u8 ? 0.0f : -128.0f), hi = _mm512_set1_ps(u8 ? 255.0f : 127.0f);
  __m512 t = _mm512_add_ps(
      _mm512_roundscale_ps(_mm512_mul_ps(y, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), ozp);
  const __mmask16 nan = _mm512_cmp_ps_mask(t, t, _CMP_UNORD_Q);
  t = _mm512_mask_blend_ps(nan, _mm512_min_ps(_mm512_max_ps(t, lo), hi), ozp);
  // Integers inside the 8-bit type: the conversion and the narrowing are exact.
  const __m512i q = _mm512_cvtps_epi32(t);
  if (u8) {
    _mm512_mask_cvtusepi32_storeu_epi8(static_cast<uint8_t*>(out) + c, m, q);
  } else {
    _mm512_mask_cvtsepi32_storeu_epi8(static_cast<int8_t*>(out) + c, m, q);
  }
}

template <bool U>
TQ_TARGET_AVX512VNNI inline __m512i widen(const void* p, __mmask32 m) {
  const __m256i v = _mm256_maskz_loadu_epi8(m, p);
  return U ? _mm512_cvtepu8_epi16(v) : _mm512_cvtepi8_epi16(v);
}

template <bool U>
TQ_TARGET_AVX512VNNI void dw_rows(const DwProblem& p, int64_t r0, int64_t r1) {
  const ConvGeometry& g = p.g;
  const int64_t C = g.C, OW = g.out[2], taps = g.taps();
  const int64_t ob = gemm_out_bytes(p.e.out_kind);
  thread_local std::vector<const uint8_t*> src;
  scratch(src, static_cast<size_t>(taps));
  const __m512i vzp = _mm512_set1_epi16(static_cast<int16_t>(p.e.a_zp));
  const uint8_t* x = static_cast<const uint8_t*>(p.x);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t oh = r % g.out[1], od = (r / g.out[1]) % g.out[0], n = r / (g.out[1] * g.out[0]);
    char* orow = static_cast<char*>(p.out_base) + r * OW * C * ob;
    for (int64_t ow = 0; ow < OW; ++ow) {
      int64_t tap = 0;
      for (int64_t kd = 0; kd < g.k[0]; ++kd) {
        const int64_t id = od * g.stride[0] - g.pad[0] + kd * g.dil[0];
        for (int64_t kh = 0; kh < g.k[1]; ++kh) {
          const int64_t ih = oh * g.stride[1] - g.pad[1] + kh * g.dil[1];
          for (int64_t kw = 0; kw < g.k[2]; ++kw, ++tap) {
            const int64_t iw = ow * g.stride[2] - g.pad[2] + kw * g.dil[2];
            const bool in = id >= 0 && id < g.in[0] && ih >= 0 && ih < g.in[1] && iw >= 0 && iw < g.in[2];
            src[tap] = in ? x + (((n * g.in[0] + id) * g.in[1] + ih) * g.in[2] + iw) * C : nullptr;
          }
        }
      }
      void* opix = orow + ow * C * ob;
      for (int64_t c = 0; c < C; c += 32) {
        const int64_t rem = C - c;
        const __mmask32 m = rem >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint32_t{1} << rem) - 1);
        __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
        for (int64_t t = 0; t < taps; ++t) {
          const __m512i xv = src[t] != nullptr ? widen<U>(src[t] + c, m) : vzp;
          const __m512i prod = _mm512_mullo_epi16(xv, widen<false>(p.w + t * C + c, m));
          a0 = _mm512_add_epi32(a0, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(prod)));
          a1 = _mm512_add_epi32(a1, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(prod, 1)));
        }
        epilogue16(p.e, a0, c, static_cast<__mmask16>(m), opix);
        if (rem > 16) epilogue16(p.e, a1, c + 16, static_cast<__mmask16>(m >> 16), opix);
      }
    }
  }
}

}  // namespace

void conv_dw__avx512vnni(const DwProblem& p, int64_t r0, int64_t r1) {
  if (p.e.a_unsigned) {
    dw_rows<true>(p, r0, r1);
  } else {
    dw_rows<false>(p, r0, r1);
  }
}
#else
void conv_dw__avx512vnni(const DwProblem& p, int64_t r0, int64_t r1) { conv_dw__scalar(p, r0, r1); }
#endif

}  // namespace cpu
}  // namespace torchquant
