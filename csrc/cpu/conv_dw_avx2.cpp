// AVX2 depthwise int8 convolution. Memory-bound: each output pixel reads taps x C activations
// and does taps multiply-adds per channel, so the loop is direct (no GEMM), vectorised across
// 16 channels at a time in channels-last layout. A product of an 8-bit activation
// (|x| <= 255) and an int8 weight (|w| <= 128) fits int16 exactly (|x * w| <= 32640), so the
// products are vpmullw and the sums widen to int32 lanes. Padded taps read the zero point.
// The epilogue is epilogue_row of gemm_avx2.cpp's sequence (the same float32 operations in the
// same order as gemm_epilogue_one), so the outputs are bit-identical to the scalar variant.
#include <immintrin.h>

#include <vector>

#include "cpu/conv_kernels.h"
#include "cpu/isa.h"
#include "cpu/scratch.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

// 8 output channels [c, c + 8) of one pixel from their int32 accumulators.
TQ_TARGET_AVX2 inline void epilogue8(const GemmProblem& e, __m256i acc, int64_t c, void* out) {
  const bool u8 = e.out_kind == GemmOut::QUInt8;
  const __m256i cs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.col_sums + c));
  const __m256i corr = _mm256_sub_epi32(acc, _mm256_mullo_epi32(_mm256_set1_epi32(e.a_zp), cs));
  const __m256 s = _mm256_mul_ps(_mm256_set1_ps(e.a_scale), _mm256_loadu_ps(e.w_scale + c));
  __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(corr), s);
  if (e.bias != nullptr) y = _mm256_add_ps(y, _mm256_loadu_ps(e.bias + c));
  if (e.relu) y = _mm256_max_ps(_mm256_setzero_ps(), y);  // 0 > y ? 0 : y: NaN and -0 pass
  if (e.out_kind == GemmOut::Float) {
    _mm256_storeu_ps(static_cast<float*>(out) + c, y);
    return;
  }
  const __m256 inv = _mm256_set1_ps(e.out_inv_scale), ozp = _mm256_set1_ps(static_cast<float>(e.out_zp));
  const __m256 lo = _mm256_set1_ps(u8 ? 0.0f : -128.0f), hi = _mm256_set1_ps(u8 ? 255.0f : 127.0f);
  __m256 t = _mm256_add_ps(
      _mm256_round_ps(_mm256_mul_ps(y, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), ozp);
  const __m256 nan = _mm256_cmp_ps(t, t, _CMP_UNORD_Q);
  t = _mm256_blendv_ps(_mm256_min_ps(_mm256_max_ps(t, lo), hi), ozp, nan);
  const __m256i q = _mm256_cvtps_epi32(t);
  const __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
  const __m128i bytes = u8 ? _mm_packus_epi16(h, h) : _mm_packs_epi16(h, h);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(static_cast<uint8_t*>(out) + c), bytes);
}

template <bool U>
TQ_TARGET_AVX2 inline __m256i widen(const void* p) {
  const __m128i v = _mm_loadu_si128(static_cast<const __m128i*>(p));
  return U ? _mm256_cvtepu8_epi16(v) : _mm256_cvtepi8_epi16(v);
}

template <bool U>
TQ_TARGET_AVX2 void dw_rows(const DwProblem& p, int64_t r0, int64_t r1) {
  const ConvGeometry& g = p.g;
  const int64_t C = g.C, OW = g.out[2], taps = g.taps();
  const int64_t ob = gemm_out_bytes(p.e.out_kind);
  const int64_t cv = C / 16 * 16;
  thread_local std::vector<const uint8_t*> src;
  scratch(src, static_cast<size_t>(taps));
  const __m256i vzp = _mm256_set1_epi16(static_cast<int16_t>(p.e.a_zp));
  const uint8_t* x = static_cast<const uint8_t*>(p.x);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t oh = r % g.out[1], od = (r / g.out[1]) % g.out[0], n = r / (g.out[1] * g.out[0]);
    GemmProblem e = p.e;
    e.ldo = C;
    char* orow = static_cast<char*>(p.out_base) + r * OW * C * ob;
    e.out = orow;
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
      for (int64_t c = 0; c < cv; c += 16) {
        __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
        for (int64_t t = 0; t < taps; ++t) {
          const __m256i xv = src[t] != nullptr ? widen<U>(src[t] + c) : vzp;
          const __m256i prod = _mm256_mullo_epi16(xv, widen<false>(p.w + t * C + c));
          a0 = _mm256_add_epi32(a0, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(prod)));
          a1 = _mm256_add_epi32(a1, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(prod, 1)));
        }
        epilogue8(e, a0, c, opix);
        epilogue8(e, a1, c + 8, opix);
      }
      for (int64_t c = cv; c < C; ++c) {
        int32_t acc = 0;
        for (int64_t t = 0; t < taps; ++t) {
          const int32_t xv = src[t] == nullptr ? p.e.a_zp
                             : U ? int32_t{src[t][c]} : int32_t{static_cast<int8_t>(src[t][c])};
          acc += xv * p.w[t * C + c];
        }
        gemm_epilogue_one(e, ow, c, gemm_correct(acc, p.e.a_zp, p.e.col_sums[c]), p.e.a_scale);
      }
    }
  }
}

}  // namespace

void conv_dw__avx2(const DwProblem& p, int64_t r0, int64_t r1) {
  if (p.e.a_unsigned) {
    dw_rows<true>(p, r0, r1);
  } else {
    dw_rows<false>(p, r0, r1);
  }
}
#else
void conv_dw__avx2(const DwProblem& p, int64_t r0, int64_t r1) { conv_dw__scalar(p, r0, r1); }
#endif

}  // namespace cpu
}  // namespace torchquant
