// AVX2 int4 weight-only Linear. A 64-byte block (8 k of 16 channels) is two 32-byte halves of
// 8 channels. vpmaddubsw multiplies the unsigned 4-bit weights by broadcast int8 activations
// into int16 pair sums (|sum| <= 2 * 15 * 128, and the low and high nibbles' sums added,
// <= 7680: no saturation), vpmaddwd against ones widens to one int32 lane per channel.
// Integer accumulators are exact and the float epilogue is that of int4_kernels.h, so results
// are bit-identical to the scalar oracle.
//
// AVX-VNNI (int4_compute__avxvnni: Intel since Alder Lake, AMD since Zen 5, most without
// AVX-512): the AVX-512 kernel's form on 256-bit halves, vpdpbusd (VEX) in place of vpmaddubsw +
// vpaddw + vpmaddwd + vpaddd: the low nibbles as they are and the high ones masked in place (16
// times their values), each multiplied by 4 broadcast activations into one int32 lane per
// channel; the high sums divided by 16 (exact: multiples of 16, |sum| < 2^31 as in
// int4_avx512.cpp) once per group (tile_vnni: the loop orders by row count).
#include <immintrin.h>

#include <cstring>

#include "cpu/int4_kernels.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

constexpr int kMR = 2;
constexpr int kMRV = 4;  // rows of the AVX-VNNI tile

TQ_TARGET_AVX2 inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Group g's step of row m's outputs for half h (channels 8 h .. 8 h + 7) of the record: the exact
// integer dot product acc, corrected for the zero points, times the scales, added to y (the float
// operations of int4_kernels.h, in its order: bit-identical to the oracle in every variant).
TQ_TARGET_AVX2 inline __m256 group_step(const Int4Problem& p, const Int4Record& rec, int h, int64_t m, int64_t g,
                                        __m256i acc, __m256 y) {
  const __m256i z = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec.z + 8 * h)));
  const __m256i wz = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec.wz + 8 * h)));
  const __m256 s = _mm256_loadu_ps(rec.s + 8 * h);
  __m256i corr = _mm256_sub_epi32(acc, _mm256_mullo_epi32(z, _mm256_set1_epi32(p.xsum[m * p.G + g])));
  corr = _mm256_sub_epi32(corr, _mm256_mullo_epi32(_mm256_set1_epi32(p.x_zp[m]), wz));
  return _mm256_add_ps(y, _mm256_mul_ps(_mm256_cvtepi32_ps(corr), s));
}

// Row m's outputs of panel pi from its two halves' sums: times the row's scale, plus the bias.
TQ_TARGET_AVX2 inline void store_row(const Int4Problem& p, int64_t m, int64_t pi, __m256 y0, __m256 y1) {
  const int64_t n0 = pi * kInt4Panel;
  const int64_t nv = p.N - n0 < kInt4Panel ? p.N - n0 : kInt4Panel;
  alignas(32) float v[kInt4Panel];
  const __m256 xs = _mm256_set1_ps(p.x_scale[m]);
  _mm256_store_ps(v, _mm256_mul_ps(y0, xs));
  _mm256_store_ps(v + 8, _mm256_mul_ps(y1, xs));
  float* o = p.out + m * p.N + n0;
  if (p.bias != nullptr) {
    for (int64_t c = 0; c < nv; ++c) o[c] = v[c] + p.bias[n0 + c];
  } else {
    for (int64_t c = 0; c < nv; ++c) o[c] = v[c];
  }
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
    for (int h = 0; h < 2; ++h)
      for (int r = 0; r < MR; ++r) y[r][h] = group_step(p, rec, h, m + r, g, acc[r][h], y[r][h]);
  }
  for (int r = 0; r < MR; ++r) store_row(p, m + r, pi, y[r][0], y[r][1]);
}

// The AVX-VNNI dot products of a record's half h: lo_acc from the low nibbles as they are, hi_acc
// from the high ones masked in place (16 times their values).
template <int MR>
TQ_TARGET_AVXVNNI inline void vnni_block(const __m256i w, const int8_t* const* xb, __m256i* lo_acc, __m256i* hi_acc) {
  const __m256i lo = _mm256_and_si256(w, _mm256_set1_epi8(0x0F));
  const __m256i hi16 = _mm256_and_si256(w, _mm256_set1_epi8(static_cast<char>(0xF0)));
  for (int r = 0; r < MR; ++r) {
    lo_acc[r] = _mm256_dpbusd_avx_epi32(lo_acc[r], lo, bcast4(xb[r]));
    hi_acc[r] = _mm256_dpbusd_avx_epi32(hi_acc[r], hi16, bcast4(xb[r] + 4));
  }
}

// 3 or 4 rows: one half (8 channels) at a time, so that the rows' low and high accumulators fit
// the 16 registers (the other half of each block is read again, from L1). One or two rows
// (decoding): both halves of each block at once, so that its line is read once, in order (the
// stream the weights come in at M = 1).
template <int MR>
TQ_TARGET_AVXVNNI void tile_vnni(const Int4Problem& p, int64_t m, int64_t pi) {
  constexpr bool kHalves = MR > 2;
  const int64_t bpg = p.group_size / kInt4Block;
  const int8_t* x[MR];
  for (int r = 0; r < MR; ++r) x[r] = p.xq + (m + r) * p.Kp;
  __m256 y[MR][2];
  for (int r = 0; r < MR; ++r) y[r][0] = y[r][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < p.G; ++g) {
    const Int4Record rec = int4_record(p, pi, g);
    for (int h0 = 0; h0 < 2; h0 += kHalves ? 1 : 2) {
      constexpr int kH = kHalves ? 1 : 2;  // halves per pass
      __m256i lo_acc[kH][MR], hi_acc[kH][MR];
      for (int h = 0; h < kH; ++h)
        for (int r = 0; r < MR; ++r) lo_acc[h][r] = hi_acc[h][r] = _mm256_setzero_si256();
      for (int64_t b = 0; b < bpg; ++b) {
        const int8_t* xb[MR];
        for (int r = 0; r < MR; ++r) xb[r] = x[r] + g * p.group_size + b * kInt4Block;
        for (int h = 0; h < kH; ++h) {
          const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec.w + b * 64 + 32 * (h0 + h)));
          vnni_block<MR>(w, xb, lo_acc[h], hi_acc[h]);
        }
      }
      for (int h = 0; h < kH; ++h)
        for (int r = 0; r < MR; ++r) {
          // (the high sums are multiples of 16: the shift divides exactly, |sum| < 2^31 as in
          // int4_avx512.cpp)
          const __m256i acc = _mm256_add_epi32(lo_acc[h][r], _mm256_srai_epi32(hi_acc[h][r], 4));
          y[r][h0 + h] = group_step(p, rec, h0 + h, m + r, g, acc, y[r][h0 + h]);
        }
    }
  }
  for (int r = 0; r < MR; ++r) store_row(p, m + r, pi, y[r][0], y[r][1]);
}

}  // namespace

TQ_TARGET_AVXVNNI void int4_compute__avxvnni(const Int4Problem& p, int64_t m0, int64_t m1, int64_t p0,
                                             int64_t p1) {
  for (int64_t pi = p0; pi < p1; ++pi) {
    int64_t m = m0;
    for (; m + kMRV <= m1; m += kMRV) tile_vnni<kMRV>(p, m, pi);
    switch (m1 - m) {
      case 3: tile_vnni<3>(p, m, pi); break;
      case 2: tile_vnni<2>(p, m, pi); break;
      case 1: tile_vnni<1>(p, m, pi); break;
      default: break;
    }
  }
}

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
void int4_compute__avxvnni(const Int4Problem& p, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  int4_compute__scalar(p, m0, m1, p0, p1);
}
#endif

}  // namespace cpu
}  // namespace torchquant
