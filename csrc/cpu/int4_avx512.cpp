// AVX-512 VNNI int4 weight-only Linear. One 64-byte block holds 8 k of 16 channels. An AND
// keeps the low nibbles (k0..k0+3: four unsigned 4-bit values per int32 lane) and another
// the high ones in place, i.e. 16 times the values of k0+4..k0+7: vpdpbusd multiplies each by
// 4 broadcast int8 activations and adds into one int32 lane per channel, and the high sums are
// divided by 16 (an exact arithmetic shift: |sum| <= 4 * 240 * 128 * 256 < 2^31 over a group of
// at most 2048) once per group. Per block and row: 1 load, 2 logic ops, 2 vpdpbusd. Even and odd
// blocks use separate accumulators, so the vpdpbusd chains overlap at M = 1, and the unpacked
// block is reused across up to kMR rows. From 4 rows on, tile_wide takes 3 to kWideMR rows of
// two panels at once, so that each activation broadcast serves two panels (K = N = 4096 on two
// Zen 5 cores, weights in cache: M = 5 157 -> 114 us, M = 32 898 -> 667 us, M = 512 19.6 ->
// 11.4 ms). The per-group epilogue and the output are the float32
// operations of int4_kernels.h in the same order (no FMA), so results are bit-identical to the
// scalar oracle.
#include <immintrin.h>

#include <cstring>

#include "cpu/int4_kernels.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

constexpr int kMR = 4;
constexpr int kWideNP = 2;  // panels of tile_wide
constexpr int kWideMR = 6;  // rows of tile_wide (at most)
constexpr int kWideMinRows = 4;  // (3 rows alone: no faster than tile<3>)

TQ_TARGET_AVX512VNNI inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

template <int MR>
TQ_TARGET_AVX512VNNI inline void block(const uint8_t* blk, const int8_t* const* xb, __m512i* lo_acc,
                                       __m512i* hi_acc, __m512i low, __m512i high) {
  const __m512i w = _mm512_loadu_si512(blk);
  const __m512i lo = _mm512_and_si512(w, low);
  const __m512i hi16 = _mm512_and_si512(w, high);
  for (int r = 0; r < MR; ++r) {
    lo_acc[r] = _mm512_dpbusd_epi32(lo_acc[r], lo, bcast4(xb[r]));
    hi_acc[r] = _mm512_dpbusd_epi32(hi_acc[r], hi16, bcast4(xb[r] + 4));
  }
}

template <int MR>
TQ_TARGET_AVX512VNNI void tile(const Int4Problem& p, int64_t m, int64_t pi) {
  const int64_t bpg = p.group_size / kInt4Block;
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i high = _mm512_set1_epi8(static_cast<char>(0xF0));
  const int8_t* x[MR];
  for (int r = 0; r < MR; ++r) x[r] = p.xq + (m + r) * p.Kp;
  __m512 y[MR];
  for (int r = 0; r < MR; ++r) y[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.G; ++g) {
    const Int4Record rec = int4_record(p, pi, g);
    __m512i lo0[MR], hi0[MR], lo1[MR], hi1[MR];
    for (int r = 0; r < MR; ++r) lo0[r] = hi0[r] = lo1[r] = hi1[r] = _mm512_setzero_si512();
    const int64_t k0 = g * p.group_size;
    const int8_t* xb[MR];
    int64_t b = 0;
    if constexpr (MR <= 2) {  // with 3 and 4 rows, the rows' chains overlap already
      for (; b + 2 <= bpg; b += 2) {
        for (int r = 0; r < MR; ++r) xb[r] = x[r] + k0 + b * kInt4Block;
        block<MR>(rec.w + b * 64, xb, lo0, hi0, low, high);
        for (int r = 0; r < MR; ++r) xb[r] += kInt4Block;
        block<MR>(rec.w + b * 64 + 64, xb, lo1, hi1, low, high);
      }
    }
    for (; b < bpg; ++b) {
      for (int r = 0; r < MR; ++r) xb[r] = x[r] + k0 + b * kInt4Block;
      block<MR>(rec.w + b * 64, xb, lo0, hi0, low, high);
    }
    const __m512i z = _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec.z)));
    const __m512i wz = _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec.wz)));
    const __m512 s = _mm512_loadu_ps(rec.s);
    for (int r = 0; r < MR; ++r) {
      __m512i corr = _mm512_add_epi32(_mm512_add_epi32(lo0[r], lo1[r]),
                                      _mm512_srai_epi32(_mm512_add_epi32(hi0[r], hi1[r]), 4));
      corr = _mm512_sub_epi32(corr, _mm512_mullo_epi32(z, _mm512_set1_epi32(p.xsum[(m + r) * p.G + g])));
      corr = _mm512_sub_epi32(corr, _mm512_mullo_epi32(_mm512_set1_epi32(p.x_zp[m + r]), wz));
      y[r] = _mm512_add_ps(y[r], _mm512_mul_ps(_mm512_cvtepi32_ps(corr), s));
    }
  }
  const int64_t n0 = pi * kInt4Panel;
  const int64_t nv = p.N - n0 < kInt4Panel ? p.N - n0 : kInt4Panel;
  const __mmask16 mask = static_cast<__mmask16>((1u << nv) - 1u);
  const __m512 bias = p.bias != nullptr ? _mm512_maskz_loadu_ps(mask, p.bias + n0) : _mm512_setzero_ps();
  for (int r = 0; r < MR; ++r) {
    __m512 v = _mm512_mul_ps(y[r], _mm512_set1_ps(p.x_scale[m + r]));
    if (p.bias != nullptr) v = _mm512_add_ps(v, bias);
    _mm512_mask_storeu_ps(p.out + (m + r) * p.N + n0, mask, v);
  }
}

// Rows m .. m + MR of panels pi .. pi + NP, for M >= kMR: each block's nibbles are unpacked to
// plain 4-bit values (an AND for the low ones, a shift and an AND for the high ones) once for
// the NP panels' and MR rows' 2 * MR * NP vpdpbusd, into one accumulator per row and panel. The
// MR activation broadcasts of a block serve NP panels: per block 2 * MR + NP loads for
// 2 * MR * NP multiplies (tile<MR>: 2 * MR + 1 for 2 * MR), where the one-panel tile waits
// on its loads. The integer sums equal tile's (lo + (hi >> 4)), and the float32 steps are the
// same: bit-identical.
template <int MR, int NP>
TQ_TARGET_AVX512VNNI void tile_wide(const Int4Problem& p, int64_t m, int64_t pi) {
  const int64_t bpg = p.group_size / kInt4Block;
  const __m512i low = _mm512_set1_epi8(0x0F);
  const int8_t* x[MR];
  for (int r = 0; r < MR; ++r) x[r] = p.xq + (m + r) * p.Kp;
  __m512 y[MR][NP];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NP; ++j) y[r][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.G; ++g) {
    Int4Record rec[NP];
    for (int j = 0; j < NP; ++j) rec[j] = int4_record(p, pi + j, g);
    __m512i acc[MR][NP];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NP; ++j) acc[r][j] = _mm512_setzero_si512();
    const int64_t k0 = g * p.group_size;
    for (int64_t b = 0; b < bpg; ++b) {
      __m512i lo[NP], hi[NP];
      for (int j = 0; j < NP; ++j) {
        const __m512i w = _mm512_loadu_si512(rec[j].w + b * 64);
        lo[j] = _mm512_and_si512(w, low);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(w, 4), low);
      }
      for (int r = 0; r < MR; ++r) {
        const int8_t* xb = x[r] + k0 + b * kInt4Block;
        const __m512i xl = bcast4(xb), xh = bcast4(xb + 4);
        for (int j = 0; j < NP; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], lo[j], xl);
        for (int j = 0; j < NP; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], hi[j], xh);
      }
    }
    for (int j = 0; j < NP; ++j) {
      const __m512i z = _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec[j].z)));
      const __m512i wz = _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec[j].wz)));
      const __m512 s = _mm512_loadu_ps(rec[j].s);
      for (int r = 0; r < MR; ++r) {
        __m512i corr = _mm512_sub_epi32(acc[r][j], _mm512_mullo_epi32(z, _mm512_set1_epi32(p.xsum[(m + r) * p.G + g])));
        corr = _mm512_sub_epi32(corr, _mm512_mullo_epi32(_mm512_set1_epi32(p.x_zp[m + r]), wz));
        y[r][j] = _mm512_add_ps(y[r][j], _mm512_mul_ps(_mm512_cvtepi32_ps(corr), s));
      }
    }
  }
  for (int j = 0; j < NP; ++j) {
    const int64_t n0 = (pi + j) * kInt4Panel;
    const int64_t nv = p.N - n0 < kInt4Panel ? p.N - n0 : kInt4Panel;
    const __mmask16 mask = static_cast<__mmask16>((1u << nv) - 1u);
    const __m512 bias = p.bias != nullptr ? _mm512_maskz_loadu_ps(mask, p.bias + n0) : _mm512_setzero_ps();
    for (int r = 0; r < MR; ++r) {
      __m512 v = _mm512_mul_ps(y[r][j], _mm512_set1_ps(p.x_scale[m + r]));
      if (p.bias != nullptr) v = _mm512_add_ps(v, bias);
      _mm512_mask_storeu_ps(p.out + (m + r) * p.N + n0, mask, v);
    }
  }
}

// Rows [m0, m1) of one panel.
TQ_TARGET_AVX512VNNI void panel_rows(const Int4Problem& p, int64_t m0, int64_t m1, int64_t pi) {
  int64_t m = m0;
  for (; m + kMR <= m1; m += kMR) tile<kMR>(p, m, pi);
  switch (m1 - m) {
    case 3: tile<3>(p, m, pi); break;
    case 2: tile<2>(p, m, pi); break;
    case 1: tile<1>(p, m, pi); break;
    default: break;
  }
}

}  // namespace

TQ_TARGET_AVX512VNNI void int4_compute__avx512vnni(const Int4Problem& p, int64_t m0, int64_t m1,
                                                   int64_t p0, int64_t p1) {
  int64_t pi = p0;
  const int64_t rows = m1 - m0;
  if (rows >= kWideMinRows) {
    // The rows cut into ceil(rows / kWideMR) tiles as even as can be (3 to kWideMR rows each:
    // M = 8 is two tiles of 4, not 6 + 2 with the 2 on the one-panel path).
    const int64_t tiles = (rows + kWideMR - 1) / kWideMR;
    for (; pi + kWideNP <= p1; pi += kWideNP) {
      int64_t m = m0;
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t mr = (m1 - m) / (tiles - t);  // (the later tiles get the extra rows)
        switch (mr) {
          case 3: tile_wide<3, kWideNP>(p, m, pi); break;
          case 4: tile_wide<4, kWideNP>(p, m, pi); break;
          case 5: tile_wide<5, kWideNP>(p, m, pi); break;
          default: tile_wide<kWideMR, kWideNP>(p, m, pi); break;
        }
        m += mr;
      }
    }
  }
  for (; pi < p1; ++pi) panel_rows(p, m0, m1, pi);
}

#else
void int4_compute__avx512vnni(const Int4Problem& p, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  int4_compute__scalar(p, m0, m1, p0, p1);
}
#endif

}  // namespace cpu
}  // namespace torchquant
