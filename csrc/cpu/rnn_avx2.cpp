// AVX2 fused recurrent-cell updates (8 units per step; the tail of H % 8 units runs the
// same vector code on a zero-padded copy, so every unit gets the same approximation).
//
// exp: Cephes expf (range reduction by ln 2 in two parts, degree-5 polynomial, 2^n through the
// exponent bits); tanh: Cephes tanhf (odd polynomial for |x| < 0.625, else
// 1 - 2 / (exp(2|x|) + 1) with x's sign); sigmoid: 1 / (1 + exp(-x)). NaN propagates.
#include <cstring>

#include "cpu/isa.h"
#include "cpu/rnn_kernels.h"

#if TQ_X86
#include <immintrin.h>
#endif

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

TQ_TARGET_AVX2 inline __m256 exp8(__m256 x) {
  // Clamp first: min/max return their second operand when one is NaN, so NaN passes through.
  // The bound 88.8 lies past log(FLT_MAX) = 88.7228 and keeps fx within [-128, 128]: above
  // log(FLT_MAX) the result overflows to inf as expf's does, so sigmoid(x) is exactly 0 for
  // x < -88.73 (0 * inf = NaN for a diverged state, as in the scalar kernels and torch), where a
  // clamp below log(FLT_MAX) gave about 4e-39 (and inf * 4e-39 = inf).
  x = _mm256_min_ps(_mm256_set1_ps(88.8f), x);
  x = _mm256_max_ps(_mm256_set1_ps(-88.8f), x);
  __m256 fx = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
  fx = _mm256_round_ps(fx, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(0.693359375f)));
  x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(-2.12194440e-4f)));
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, z, x);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  // fx lies in [-128, 128]: 2^fx split in two factors keeps both exponents in range.
  const __m256i n = _mm256_cvtps_epi32(fx);
  const __m256i h1 = _mm256_srai_epi32(n, 1);
  const __m256i h2 = _mm256_sub_epi32(n, h1);
  const __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h1, _mm256_set1_epi32(127)), 23));
  const __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h2, _mm256_set1_epi32(127)), 23));
  return _mm256_mul_ps(_mm256_mul_ps(y, p1), p2);
}

TQ_TARGET_AVX2 inline __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(one, _mm256_add_ps(one, e));
}

TQ_TARGET_AVX2 inline __m256 tanh8(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 ax = _mm256_andnot_ps(sign, x);
  const __m256 one = _mm256_set1_ps(1.0f);
  // Large |x|: 1 - 2 / (exp(2|x|) + 1), sign restored.
  const __m256 e = exp8(_mm256_add_ps(ax, ax));
  __m256 big = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
  big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
  // Small |x|: x + x^3 P(x^2).
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
  const __m256 use_small = _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ);
  return _mm256_blendv_ps(big, small, use_small);
}

TQ_TARGET_AVX2 inline void lstm8(const float* ig, const float* hg, const float* c, float* h_out,
                                 float* c_out, int64_t H, int64_t j) {
  const __m256 i = sigmoid8(_mm256_add_ps(_mm256_loadu_ps(ig + j), _mm256_loadu_ps(hg + j)));
  const __m256 f = sigmoid8(_mm256_add_ps(_mm256_loadu_ps(ig + H + j), _mm256_loadu_ps(hg + H + j)));
  const __m256 g = tanh8(_mm256_add_ps(_mm256_loadu_ps(ig + 2 * H + j), _mm256_loadu_ps(hg + 2 * H + j)));
  const __m256 o = sigmoid8(_mm256_add_ps(_mm256_loadu_ps(ig + 3 * H + j), _mm256_loadu_ps(hg + 3 * H + j)));
  const __m256 cy = _mm256_add_ps(_mm256_mul_ps(f, _mm256_loadu_ps(c + j)), _mm256_mul_ps(i, g));
  _mm256_storeu_ps(c_out + j, cy);
  _mm256_storeu_ps(h_out + j, _mm256_mul_ps(o, tanh8(cy)));
}

TQ_TARGET_AVX2 inline void gru8(const float* ig, const float* hg, const float* h, float* h_out,
                                int64_t H, int64_t j) {
  const __m256 r = sigmoid8(_mm256_add_ps(_mm256_loadu_ps(ig + j), _mm256_loadu_ps(hg + j)));
  const __m256 z = sigmoid8(_mm256_add_ps(_mm256_loadu_ps(ig + H + j), _mm256_loadu_ps(hg + H + j)));
  const __m256 n = tanh8(_mm256_add_ps(_mm256_loadu_ps(ig + 2 * H + j),
                                       _mm256_mul_ps(r, _mm256_loadu_ps(hg + 2 * H + j))));
  _mm256_storeu_ps(h_out + j, _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(h + j), n), z), n));
}

}  // namespace

TQ_TARGET_AVX2 void lstm_cell_row__avx2(const float* ig, const float* hg, const float* c,
                                        float* h_out, float* c_out, int64_t H) {
  int64_t j = 0;
  for (; j + 8 <= H; j += 8) lstm8(ig, hg, c, h_out, c_out, H, j);
  const int64_t r = H - j;
  if (r == 0) return;
  // Tail: gather the r units of each gate into 8-wide buffers (gate stride 8).
  float tig[32] = {0}, thg[32] = {0}, tc[8] = {0}, th[8], tco[8];
  for (int g = 0; g < 4; ++g) {
    std::memcpy(tig + 8 * g, ig + g * H + j, r * sizeof(float));
    std::memcpy(thg + 8 * g, hg + g * H + j, r * sizeof(float));
  }
  std::memcpy(tc, c + j, r * sizeof(float));
  lstm8(tig, thg, tc, th, tco, 8, 0);
  std::memcpy(h_out + j, th, r * sizeof(float));
  std::memcpy(c_out + j, tco, r * sizeof(float));
}

TQ_TARGET_AVX2 void gru_cell_row__avx2(const float* ig, const float* hg, const float* h,
                                       float* h_out, int64_t H) {
  int64_t j = 0;
  for (; j + 8 <= H; j += 8) gru8(ig, hg, h, h_out, H, j);
  const int64_t r = H - j;
  if (r == 0) return;
  float tig[24] = {0}, thg[24] = {0}, th[8] = {0}, tho[8];
  for (int g = 0; g < 3; ++g) {
    std::memcpy(tig + 8 * g, ig + g * H + j, r * sizeof(float));
    std::memcpy(thg + 8 * g, hg + g * H + j, r * sizeof(float));
  }
  std::memcpy(th, h + j, r * sizeof(float));
  gru8(tig, thg, th, tho, 8, 0);
  std::memcpy(h_out + j, tho, r * sizeof(float));
}

#else  // not x86: the scalar kernels stand in (never chosen: cpu_isa() is scalar there).

void lstm_cell_row__avx2(const float* ig, const float* hg, const float* c, float* h_out,
                         float* c_out, int64_t H) {
  lstm_cell_row__scalar(ig, hg, c, h_out, c_out, H);
}
void gru_cell_row__avx2(const float* ig, const float* hg, const float* h, float* h_out,
                        int64_t H) {
  gru_cell_row__scalar(ig, hg, h, h_out, H);
}

#endif

}  // namespace cpu
}  // namespace torchquant
