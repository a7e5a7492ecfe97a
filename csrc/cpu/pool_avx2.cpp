// AVX2 int8 pooling kernels, channels-last: 32 channels per vector, the window's taps walked
// per output pixel with the accumulators in registers (up to 128 channels at a time for max,
// 64 for the averages).
// - max: vpmaxub / vpmaxsb, exact;
// - avg: the codes widened to int16 (in-lane unpacks) and summed (at most 128 taps before the
//   int16 sums are added into int32 ones: 128 * 255 < 2^15), S = sum - taps * zp in int32 (exact: the adapter
//   sends windows of more than kPoolMaxTapsInt32 taps to the scalar kernels), then the scalar
//   kernel's float32 steps, one IEEE operation each (-ffp-contract=off): cvtdq2ps is exact
//   below 2^24 and rounds to nearest even above, as the scalar int64 -> float conversion does.
// Channel counts that are no multiple of 32 end with one vector overlapping the previous one
// (the same values written twice); fewer than 32 channels go to the scalar kernel. Planar data
// uses the scalar kernels.
#include <immintrin.h>

#include "cpu/isa.h"
#include "cpu/pool_kernels.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

struct Window {
  int64_t fd, nd, fh, nh, fw, nw;
};

inline Window window_of(const PoolArgs& a, int64_t od, int64_t oh, int64_t ow) {
  return {a.first[0][od], a.taps[0][od], a.first[1][oh], a.taps[1][oh], a.first[2][ow], a.taps[2][ow]};
}

template <bool U>
TQ_TARGET_AVX2 inline __m256i vmax(__m256i a, __m256i b) {
  return U ? _mm256_max_epu8(a, b) : _mm256_max_epi8(a, b);
}

// 32 codes widened to int16 within each 128-bit lane: lo holds channels 0-7 and 16-23, hi
// 8-15 and 24-31 (flush16 puts them back in order).
template <bool U>
TQ_TARGET_AVX2 inline void widen16(__m256i b, __m256i& lo, __m256i& hi) {
  const __m256i ext = U ? _mm256_setzero_si256() : _mm256_cmpgt_epi8(_mm256_setzero_si256(), b);
  lo = _mm256_unpacklo_epi8(b, ext);
  hi = _mm256_unpackhi_epi8(b, ext);
}

// NV vectors of channels at xn + c: the window's max into y.
template <bool U, int NV>
TQ_TARGET_AVX2 inline void max_block(const PoolArgs& a, const Window& w, const uint8_t* xn, uint8_t* y,
                                     int64_t c) {
  const int64_t C = a.C, pix_h = a.in[2] * C, pix_d = a.in[1] * a.in[2] * C;
  const int64_t sd = a.step[0] * pix_d, sh = a.step[1] * pix_h, sw = a.step[2] * C;
  __m256i acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_set1_epi8(U ? 0 : -128);
  const uint8_t* pd = xn + w.fd * pix_d + w.fh * pix_h + w.fw * C + c;
  for (int64_t td = 0; td < w.nd; ++td, pd += sd) {
    const uint8_t* ph = pd;
    for (int64_t th = 0; th < w.nh; ++th, ph += sh) {
      const uint8_t* pw = ph;
      for (int64_t tw = 0; tw < w.nw; ++tw, pw += sw) {
        for (int v = 0; v < NV; ++v) {
          acc[v] = vmax<U>(acc[v], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pw + 32 * v)));
        }
      }
    }
  }
  for (int v = 0; v < NV; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + c + 32 * v), acc[v]);
}

struct AvgConsts {
  __m256 inv, zpf, lo, hi;
  __m256i bias;  // n_valid * zp
};

// Eight int32 sums -> eight integer-valued floats of the output.
TQ_TARGET_AVX2 inline __m256 finish8(__m256i s, const AvgConsts& k) {
  const __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(s, k.bias)), k.inv);
  const __m256 t = _mm256_add_ps(_mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), k.zpf);
  return _mm256_min_ps(_mm256_max_ps(t, k.lo), k.hi);
}

template <bool U>
TQ_TARGET_AVX2 inline void store32(uint8_t* dst, const __m256i* s, const AvgConsts& k) {
  const __m256i ab = _mm256_packs_epi32(_mm256_cvtps_epi32(finish8(s[0], k)), _mm256_cvtps_epi32(finish8(s[1], k)));
  const __m256i cd = _mm256_packs_epi32(_mm256_cvtps_epi32(finish8(s[2], k)), _mm256_cvtps_epi32(finish8(s[3], k)));
  const __m256i bytes = U ? _mm256_packus_epi16(ab, cd) : _mm256_packs_epi16(ab, cd);
  const __m256i ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), ordered);
}

// int16 sums (two vectors per 32 channels, widen16's order) added into int32 ones in channel
// order: s32[4v + i] holds channels 8i to 8i + 7 of block v.
TQ_TARGET_AVX2 inline void flush16(__m256i* s32, __m256i* s16, int nv) {
  for (int v = 0; v < nv; ++v) {
    for (int h = 0; h < 2; ++h) {  // h = 0: channels 0-7 | 16-23; h = 1: 8-15 | 24-31
      const __m256i t = s16[2 * v + h];
      s32[4 * v + h] = _mm256_add_epi32(s32[4 * v + h], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(t)));
      s32[4 * v + 2 + h] =
          _mm256_add_epi32(s32[4 * v + 2 + h], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(t, 1)));
      s16[2 * v + h] = _mm256_setzero_si256();
    }
  }
}

template <bool U, int NV, bool FLUSH>
TQ_TARGET_AVX2 inline void avg_block(const PoolArgs& a, const Window& w, const AvgConsts& k, const uint8_t* xn,
                                     uint8_t* y, int64_t c) {
  const int64_t C = a.C, pix_h = a.in[2] * C, pix_d = a.in[1] * a.in[2] * C;
  const int64_t sd = a.step[0] * pix_d, sh = a.step[1] * pix_h, sw = a.step[2] * C;
  __m256i s16[2 * NV], s32[4 * NV];
  for (int v = 0; v < 2 * NV; ++v) s16[v] = _mm256_setzero_si256();
  for (int v = 0; v < 4 * NV; ++v) s32[v] = _mm256_setzero_si256();
  int pending = 0;
  const uint8_t* pd = xn + w.fd * pix_d + w.fh * pix_h + w.fw * C + c;
  for (int64_t td = 0; td < w.nd; ++td, pd += sd) {
    const uint8_t* ph = pd;
    for (int64_t th = 0; th < w.nh; ++th, ph += sh) {
      const uint8_t* pw = ph;
      for (int64_t tw = 0; tw < w.nw; ++tw, pw += sw) {
        for (int v = 0; v < NV; ++v) {
          __m256i lo, hi;
          widen16<U>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pw + 32 * v)), lo, hi);
          s16[2 * v] = _mm256_add_epi16(s16[2 * v], lo);
          s16[2 * v + 1] = _mm256_add_epi16(s16[2 * v + 1], hi);
        }
        if (FLUSH && ++pending == 128) {
          flush16(s32, s16, NV);
          pending = 0;
        }
      }
    }
  }
  flush16(s32, s16, NV);
  for (int v = 0; v < NV; ++v) store32<U>(y + c + 32 * v, s32 + 4 * v, k);
}

template <bool U, bool MAX>
TQ_TARGET_AVX2 void pool_cl(const PoolArgs& a, int64_t p0, int64_t p1, int64_t c0, int64_t c1) {
  const int64_t C = a.C, D = a.in[0], H = a.in[1], W = a.in[2];
  const int64_t OD = a.out[0], OH = a.out[1], OW = a.out[2];
  const float lo = U ? 0.0f : -128.0f, hi = U ? 255.0f : 127.0f;
  // The pixel's coordinates, divided out once and then counted up (a division per pixel
  // costs more than a small window's loads).
  int64_t ow = p0 % OW, oh = (p0 / OW) % OH, od = (p0 / (OW * OH)) % OD, n = p0 / (OW * OH * OD);
  for (int64_t p = p0; p < p1; ++p) {
    if (p != p0 && ++ow == OW) {
      ow = 0;
      if (++oh == OH) {
        oh = 0;
        if (++od == OD) {
          od = 0;
          ++n;
        }
      }
    }
    const uint8_t* xn = a.x + n * D * H * W * C;
    uint8_t* y = a.y + p * C;
    const Window w = window_of(a, od, oh, ow);
    AvgConsts k;
    if (!MAX) {
      const int64_t count = a.divisor_override != 0 ? a.divisor_override
                                                    : int64_t{a.div[0][od]} * a.div[1][oh] * a.div[2][ow];
      k.inv = _mm256_set1_ps(1.0f / static_cast<float>(count));
      k.zpf = _mm256_set1_ps(static_cast<float>(a.zp));
      k.lo = _mm256_set1_ps(lo);
      k.hi = _mm256_set1_ps(hi);
      k.bias = _mm256_set1_epi32(static_cast<int32_t>(w.nd * w.nh * w.nw) * a.zp);
    }
    int64_t c = c0;
    if (MAX) {
      for (; c + 128 <= c1; c += 128) max_block<U, 4>(a, w, xn, y, c);
      for (; c + 64 <= c1; c += 64) max_block<U, 2>(a, w, xn, y, c);
      for (; c + 32 <= c1; c += 32) max_block<U, 1>(a, w, xn, y, c);
      if (c < c1) max_block<U, 1>(a, w, xn, y, c1 - 32);
    } else {
      if (w.nd * w.nh * w.nw <= 128) {  // the int16 sums cannot overflow
        for (; c + 64 <= c1; c += 64) avg_block<U, 2, false>(a, w, k, xn, y, c);
        for (; c + 32 <= c1; c += 32) avg_block<U, 1, false>(a, w, k, xn, y, c);
        if (c < c1) avg_block<U, 1, false>(a, w, k, xn, y, c1 - 32);
      } else {
        for (; c + 64 <= c1; c += 64) avg_block<U, 2, true>(a, w, k, xn, y, c);
        for (; c + 32 <= c1; c += 32) avg_block<U, 1, true>(a, w, k, xn, y, c);
        if (c < c1) avg_block<U, 1, true>(a, w, k, xn, y, c1 - 32);
      }
    }
  }
}

}  // namespace

void max_pool_cl__avx2(const PoolArgs& a, int64_t p0, int64_t p1, int64_t c0, int64_t c1) {
  if (c1 - c0 < 32) return max_pool_cl__scalar(a, p0, p1, c0, c1);
  a.is_unsigned ? pool_cl<true, true>(a, p0, p1, c0, c1) : pool_cl<false, true>(a, p0, p1, c0, c1);
}
void avg_pool_cl__avx2(const PoolArgs& a, int64_t p0, int64_t p1, int64_t c0, int64_t c1) {
  if (c1 - c0 < 32) return avg_pool_cl__scalar(a, p0, p1, c0, c1);
  a.is_unsigned ? pool_cl<true, false>(a, p0, p1, c0, c1) : pool_cl<false, false>(a, p0, p1, c0, c1);
}

#else  // not x86: the scalar kernels

void max_pool_cl__avx2(const PoolArgs& a, int64_t p0, int64_t p1, int64_t c0, int64_t c1) {
  max_pool_cl__scalar(a, p0, p1, c0, c1);
}
void avg_pool_cl__avx2(const PoolArgs& a, int64_t p0, int64_t p1, int64_t c0, int64_t c1) {
  avg_pool_cl__scalar(a, p0, p1, c0, c1);
}

#endif

void max_pool_planar__avx2(const PoolArgs& a, int64_t r0, int64_t r1) { max_pool_planar__scalar(a, r0, r1); }
void avg_pool_planar__avx2(const PoolArgs& a, int64_t r0, int64_t r1) { avg_pool_planar__scalar(a, r0, r1); }

}  // namespace cpu
}  // namespace torchquant
