// AVX2 int4 weight-only Linear. A 64-byte block (8 k of 16 channels) is two 32-byte halves of
// 8 channels. vpmaddubsw multiplies the unsigned 4-bit weights by broadcast int8 activations
// into int16 pair sums (|sum| <= 2 * 15 * 128, and the low and high nibbles' sums added,
// <= 7680: no saturation), vpmaddwd against ones widens to one int32 lane per channel.
// Integer accumulators are exact and the float epilogue is that of int4_kernels.h, so results
// are bit-identical to the scalar oracle.
#include <immintrin.h>

#include <cstring>

#include "cpu/int4_kernels.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

constexpr int kMR = 2;

TQ_TARGET_AVX2 inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

template <int MR>
TQ_TARGET_AVX2 void tile(const Int4Problem& p, int64_t m, int64_t pi) {
  const int64_t bpg = p.group_size / kInt4Block;
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* x[MR];
  for (int r = 0; r < MR; ++r) x[r] = p.xq + (m + r) * p.Kp;
  __m256 y[MR][2];
  for (int r = 0; r < MR; ++r) y[r][0] = y[r][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < p.G; ++g) {
    const Int4Record rec = int4_record(p, pi, g);
    __m256i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t b = 0; b < bpg; ++b) {
      for (int h = 0; h < 2; ++h) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec.w + b * 64 + 32 * h));
        const __m256i lo = _mm256_and_si256(w, low);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), low);
        for (int r = 0; r < MR; ++r) {
          const int8_t* xb = x[r] + g * p.group_size + b * kInt4Block;
          const __m256i t = _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(xb)),
                                             _mm256_maddubs_epi16(hi, bcast4(xb + 4)));
          acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(t, ones));
        }
      }
    }
    for (int h = 0; h < 2; ++h) {
      const __m256i z = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec.z + 8 * h)));
      const __m256i wz = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec.wz + 8 * h)));
      const __m256 s = _mm256_loadu_ps(rec.s + 8 * h);
      for (int r = 0; r < MR; ++r) {
        __m256i corr = _mm256_sub_epi32(acc[r][h], _mm256_mullo_epi32(z, _mm256_set1_epi32(p.xsum[(m + r) * p.G + g])));
        corr = _mm256_sub_epi32(corr, _mm256_mullo_epi32(_mm256_set1_epi32(p.x_zp[m + r]), wz));
        y[r][h] = _mm256_add_ps(y[r][h], _mm256_mul_ps(_mm256_cvtepi32_ps(corr), s));
      }
    }
  }
  const int64_t n0 = pi * kInt4Panel;
  const int64_t nv = p.N - n0 < kInt4Panel ? p.N - n0 : kInt4Panel;
  for (int r = 0; r < MR; ++r) {
    alignas(32) float v[kInt4Panel];
    const __m256 xs = _mm256_set1_ps(p.x_scale[m + r]);
    _mm256_store_ps(v, _mm256_mul_ps(y[r][0], xs));
    _mm256_store_ps(v + 8, _mm256_mul_ps(y[r][1], xs));
    float* o = p.out + (m + r) * p.N + n0;
    if (p.bias != nullptr) {
      for (int64_t c = 0; c < nv; ++c) o[c] = v[c] + p.bias[n0 + c];
    } else {
      for (int64_t c = 0; c < nv; ++c) o[c] = v[c];
    }
  }
}

}  // namespace

TQ_TARGET_AVX2 void int4_compute__avx2(const Int4Problem& p, int64_t m0, int64_t m1, int64_t p0,
                                       int64_t p1) {
  for (int64_t pi = p0; pi < p1; ++pi) {
    int64_t m = m0;
    for (; m + kMR <= m1; m += kMR) tile<kMR>(p, m, pi);
    if (m < m1) tile<1>(p, m, pi);
  }
}

#else
void int4_compute__avx2(const Int4Problem& p, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  int4_compute__scalar(p, m0, m1, p0, p1);
}
#endif

}  // namespace cpu
}  // namespace torchquant
