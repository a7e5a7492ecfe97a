// AVX-512 VNNI int8 GEMM: vpdpbusd multiplies 4 uint8 activations by 4 int8 weights and adds
// the 4 products straight into an int32 lane, so nothing passes through int16 and full 8-bit
// activations are exact (unlike vpmaddubsw, whose int16 pair sums saturate at 2*255*127).
//
// vpdpbusd wants the activations unsigned. uint8 activations go in as they are; int8 ones are
// flipped to x + 128 (xor 0x80 on each byte), which adds 128 * col_sums[n] to every
// accumulator: the epilogue subtracts (zp + 128) * col_sums[n] instead of zp * col_sums[n].
// Each product is at most 255 * 128 in magnitude and the accumulators wrap modulo 2^32, so
// the corrected value, exact by K <= kMaxK, comes out right even where the flipped sum passed
// 2^31 on the way.
//
// Register tile: up to kMR = 6 rows x kNV = 4 panels (64 columns): 24 accumulators, 4 weight
// vectors and one broadcast out of 32 zmm registers. The epilogue is the float32 sequence of
// gemm_dequant / quantize_val with the same IEEE operations in the same order (no FMA:
// -ffp-contract=off and no fmadd intrinsic), so every output is bit-identical to the scalar
// oracle, and a last partial chunk of columns runs the same sequence under a lane mask.
#include <immintrin.h>

#include <cstring>

#include "cpu/gemm_kernels.h"
#include "cpu/gemm_transpose_avx512.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

constexpr int kMR = 6;
constexpr int kNV = 4;
constexpr int64_t kGroup = 64;  // bytes of one 4-k group of a panel

TQ_TARGET_AVX512VNNI inline int32_t load4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

template <bool Flip>
TQ_TARGET_AVX512VNNI inline __m512i bcast(const uint8_t* p, __m512i vflip) {
  const __m512i x = _mm512_set1_epi32(load4(p));
  return Flip ? _mm512_xor_si512(x, vflip) : x;
}

// c[R][NV * 16] = accumulators over `groups` full 4-k groups. The accumulators are named variables, not an array: GCC keeps an array of vectors indexed
// in a loop in memory, which costs a store per multiply-add.
#define TQ_VNNI_ROW(i, X)                                                         \
  if constexpr (R > i) {                                                          \
    const __m512i x = X;                                                          \
    acc##i##0 = _mm512_dpbusd_epi32(acc##i##0, x, w0);                            \
    if constexpr (NV > 1) acc##i##1 = _mm512_dpbusd_epi32(acc##i##1, x, w1);      \
    if constexpr (NV > 2) acc##i##2 = _mm512_dpbusd_epi32(acc##i##2, x, w2);      \
    if constexpr (NV > 3) acc##i##3 = _mm512_dpbusd_epi32(acc##i##3, x, w3);      \
  }
#define TQ_VNNI_STORE(i)                                                          \
  if constexpr (R > i) {                                                          \
    _mm512_storeu_si512(c + i * kNV * 16, acc##i##0);                             \
    if constexpr (NV > 1) _mm512_storeu_si512(c + i * kNV * 16 + 16, acc##i##1);  \
    if constexpr (NV > 2) _mm512_storeu_si512(c + i * kNV * 16 + 32, acc##i##2);  \
    if constexpr (NV > 3) _mm512_storeu_si512(c + i * kNV * 16 + 48, acc##i##3);  \
  }

// Flip: int8 activations, xor-ed to uint8 on the way in. uint8 ones skip the xor: one vector op
// less per row and group, which matters when few panels share each broadcast (N <= 32).
template <int R, int NV, bool Flip>
TQ_TARGET_AVX512VNNI void micro(const uint8_t* a, int64_t lda, const int8_t* b, int64_t pstride,
                                int64_t groups, int32_t* c) {
  const __m512i z = _mm512_setzero_si512();
  __m512i acc00 = z, acc01 = z, acc02 = z, acc03 = z, acc10 = z, acc11 = z, acc12 = z, acc13 = z,
          acc20 = z, acc21 = z, acc22 = z, acc23 = z, acc30 = z, acc31 = z, acc32 = z, acc33 = z,
          acc40 = z, acc41 = z, acc42 = z, acc43 = z, acc50 = z, acc51 = z, acc52 = z, acc53 = z;
  const __m512i vflip = _mm512_set1_epi32(static_cast<int32_t>(0x80808080u));
  __m512i w0 = z, w1 = z, w2 = z, w3 = z;
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* bg = b + g * kGroup;
    w0 = _mm512_loadu_si512(bg);
    if constexpr (NV > 1) w1 = _mm512_loadu_si512(bg + pstride);
    if constexpr (NV > 2) w2 = _mm512_loadu_si512(bg + 2 * pstride);
    if constexpr (NV > 3) w3 = _mm512_loadu_si512(bg + 3 * pstride);
    const uint8_t* ag = a + 4 * g;
    TQ_VNNI_ROW(0, bcast<Flip>(ag, vflip))
    TQ_VNNI_ROW(1, bcast<Flip>(ag + lda, vflip))
    TQ_VNNI_ROW(2, bcast<Flip>(ag + 2 * lda, vflip))
    TQ_VNNI_ROW(3, bcast<Flip>(ag + 3 * lda, vflip))
    TQ_VNNI_ROW(4, bcast<Flip>(ag + 4 * lda, vflip))
    TQ_VNNI_ROW(5, bcast<Flip>(ag + 5 * lda, vflip))
  }
  TQ_VNNI_STORE(0)
  TQ_VNNI_STORE(1)
  TQ_VNNI_STORE(2)
  TQ_VNNI_STORE(3)
  TQ_VNNI_STORE(4)
  TQ_VNNI_STORE(5)
}

#undef TQ_VNNI_ROW
#undef TQ_VNNI_STORE

using MicroFn = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*);

// Adds the tail group (K % 4 != 0) to c: activations ta (one zero-padded int32 per row) times
// the zero-padded weights tw (64 bytes per panel).
TQ_TARGET_AVX512VNNI void tail_group(int rows, int nv, const int32_t* ta, const int8_t* tw,
                                     int32_t* c) {
  for (int i = 0; i < rows; ++i) {
    const __m512i x = _mm512_set1_epi32(ta[i]);
    for (int v = 0; v < nv; ++v) {
      int32_t* ci = c + i * kNV * 16 + v * 16;
      _mm512_storeu_si512(ci, _mm512_dpbusd_epi32(_mm512_loadu_si512(ci), x,
                                                  _mm512_loadu_si512(tw + v * kGroup)));
    }
  }
}

template <int R, bool F>
constexpr MicroFn micro_for(int nv) {
  return nv == 1 ? &micro<R, 1, F> : nv == 2 ? &micro<R, 2, F> : nv == 3 ? &micro<R, 3, F>
                                                                          : &micro<R, 4, F>;
}

template <bool F>
MicroFn pick_micro_f(int rows, int nv) {
  switch (rows) {
    case 1: return micro_for<1, F>(nv);
    case 2: return micro_for<2, F>(nv);
    case 3: return micro_for<3, F>(nv);
    case 4: return micro_for<4, F>(nv);
    case 5: return micro_for<5, F>(nv);
    default: return micro_for<6, F>(nv);
  }
}

MicroFn pick_micro(int rows, int nv, bool flip) {
  return flip ? pick_micro_f<true>(rows, nv) : pick_micro_f<false>(rows, nv);
}

// One output row of ncols columns starting at n0, from its raw accumulators. zc[j] is the
// zero-point correction zp * col_sums[n0 + j] and sc[j] the scale a_scale * w_scale[n0 + j] of
// column n0 + j (the same int32 and float32 operations as the oracle's, made once per panel
// group for per-tensor activations, or here per row when they are per row). A last chunk of
// fewer than 16 columns runs the same vector sequence under a lane mask (masked loads read
// nothing past N, masked stores write nothing past it): with N = 10 the whole output is such
// a chunk, and going element by element through the oracle cost more than the multiply.
// nan_free: no NaN can reach the requantize (see GemmProblem), so its NaN -> zp step is skipped.
template <bool kPre>
TQ_TARGET_AVX512VNNI void epilogue_row(const GemmProblem& p, const int32_t* acc, int64_t m,
                                       int64_t n0, int64_t ncols, int32_t zp, float a_scale,
                                       const int32_t* zc, const float* sc) {
  const __m512i vzp = _mm512_set1_epi32(zp);
  const __m512 vas = _mm512_set1_ps(a_scale), zero = _mm512_setzero_ps();
  const bool u8 = p.out_kind == GemmOut::QUInt8;
  const __m512 inv = _mm512_set1_ps(p.out_inv_scale),
               ozp = _mm512_set1_ps(static_cast<float>(p.out_zp)),
               lo = _mm512_set1_ps(u8 ? 0.0f : -128.0f), hi = _mm512_set1_ps(u8 ? 255.0f : 127.0f);
  for (int64_t j = 0; j < ncols; j += 16) {
    const __mmask16 k = ncols - j >= 16 ? __mmask16(0xFFFF)
                                        : static_cast<__mmask16>((1u << (ncols - j)) - 1u);
    const int64_t n = n0 + j, o = m * p.ldo + n;
    // acc (and zc, sc) hold 16 lanes per chunk (the register tile's width): read whole.
    const __m512i corr = _mm512_sub_epi32(
        _mm512_loadu_si512(acc + j),
        kPre ? _mm512_loadu_si512(zc + j)
             : _mm512_mullo_epi32(vzp, _mm512_maskz_loadu_epi32(k, p.col_sums + n)));
    if (p.out_kind == GemmOut::Int32) {
      _mm512_mask_storeu_epi32(static_cast<int32_t*>(p.out) + o, k, corr);
      continue;
    }
    const __m512 s =
        kPre ? _mm512_loadu_ps(sc + j) : _mm512_mul_ps(vas, _mm512_maskz_loadu_ps(k, p.w_scale + n));
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), s);
    if (p.bias != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(k, p.bias + n));
    if (p.relu) y = _mm512_max_ps(zero, y);  // 0 > y ? 0 : y: NaN and -0 pass through
    if (p.out_kind == GemmOut::Float) {
      _mm512_mask_storeu_ps(static_cast<float*>(p.out) + o, k, y);
      continue;
    }
    // quantize_val: round half to even (roundscale, MXCSR not consulted), clamp, NaN -> zp.
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
    // A whole chunk packs in a register and stores plainly: the masked narrowing store
    // (vpmovdb to memory) was the slowest instruction of the epilogue on AMD Zen 4.
    uint8_t* dst = static_cast<uint8_t*>(p.out) + o;
    if (k == __mmask16(0xFFFF)) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(t)));
    } else {
      _mm512_mask_cvtepi32_storeu_epi8(dst, k, _mm512_cvtps_epi32(t));
    }
  }
}

// The requantized epilogue (int8 / uint8 out, nan_free, per-tensor activation qparams) of
// `rows` rows of a register tile whose 64 columns are all real, without run-time branches:
// t = round(y * inv) (integer-valued; the clamp at 2^30 keeps the conversion in range, and
// -inf or anything below -2^31 converts to INT32_MIN), then int16 saturation, a saturating
// + zero point and the byte pack's saturation give clamp(t + zp, lo, hi) as quantize_val does
// (whatever saturates at int16 lies far outside [lo, hi] either way). ReLU folds into the clamp:
// y < 0 gives t <= 0, so max(t + zp, zp) = zp, the output of y = 0; y >= 0 leaves t + zp >= zp
// unchanged. bc holds the biases or +0.0, which changes at most the sign of a zero y and no
// output. Two packs interleave the four 16-column chunks by 128-bit lane; one dword
// permutation puts the 64 bytes back in column order. Bit-identical to gemm_epilogue_one.
// A tile of fewer columns (Half: at most 32) runs the same sequence on its chunks (lanes past
// N hold zero accumulators, corrections, scales and biases: no NaN) and stores the first
// ncols bytes under a byte mask.
template <bool U8, bool Relu, bool Half>
TQ_TARGET_AVX512VNNI void epilogue_rows64(const GemmProblem& p, const int32_t* c, int64_t m,
                                          int rows, int64_t n0, int64_t ncols, const int32_t* zc,
                                          const float* sc, const float* bc) {
  const __mmask64 keep = ncols >= 64 ? ~__mmask64{0} : (__mmask64{1} << ncols) - 1;
  const __m512 inv = _mm512_set1_ps(p.out_inv_scale), big = _mm512_set1_ps(1073741824.0f);
  const __m512i zp16 = _mm512_set1_epi16(static_cast<int16_t>(p.out_zp));
  const __m512i perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i z0 = _mm512_load_si512(zc), z1 = _mm512_load_si512(zc + 16),
                z2 = _mm512_load_si512(zc + 32), z3 = _mm512_load_si512(zc + 48);
  const __m512 s0 = _mm512_load_ps(sc), s1 = _mm512_load_ps(sc + 16), s2 = _mm512_load_ps(sc + 32),
               s3 = _mm512_load_ps(sc + 48);
  const __m512 b0 = _mm512_load_ps(bc), b1 = _mm512_load_ps(bc + 16), b2 = _mm512_load_ps(bc + 32),
               b3 = _mm512_load_ps(bc + 48);
  auto q = [&](const int32_t* a, __m512i z, __m512 s, __m512 b) TQ_TARGET_AVX512VNNI {
    const __m512 y = _mm512_add_ps(
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(a), z)), s), b);
    const __m512 u = _mm512_min_ps(_mm512_mul_ps(y, inv), big);
    // One conversion with embedded round-to-nearest-even (MXCSR not consulted): the same
    // integer as roundscale then an exact conversion, one instruction less per 16 outputs (the
    // epilogue is half of the 3x3/2 RGB stem's time: K = 36 against 32 columns).
    return _mm512_cvt_roundps_epi32(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  };
  for (int i = 0; i < rows; ++i) {
    const int32_t* a = c + i * kNV * 16;
    __m512i w01 = _mm512_adds_epi16(_mm512_packs_epi32(q(a, z0, s0, b0), q(a + 16, z1, s1, b1)), zp16);
    __m512i w23 = zp16;
    if (!Half) w23 = _mm512_adds_epi16(_mm512_packs_epi32(q(a + 32, z2, s2, b2), q(a + 48, z3, s3, b3)), zp16);
    if (Relu) {
      w01 = _mm512_max_epi16(w01, zp16);
      w23 = _mm512_max_epi16(w23, zp16);
    }
    const __m512i bytes = _mm512_permutexvar_epi32(
        perm, U8 ? _mm512_packus_epi16(w01, w23) : _mm512_packs_epi16(w01, w23));
    uint8_t* dst = static_cast<uint8_t*>(p.out) + (m + i) * p.ldo + n0;
    if (ncols >= 64) {
      _mm512_storeu_si512(dst, bytes);
    } else {
      _mm512_mask_storeu_epi8(dst, keep, bytes);
    }
  }
}

// The per-tensor epilogue of a register tile: epilogue_rows64 where it applies (16 columns or
// more), else row by row.
TQ_TARGET_AVX512VNNI inline void epilogue_tile(const GemmProblem& p, const int32_t* c, int64_t m,
                                               int rows, int64_t n0, int64_t ncols,
                                               const int32_t* zc, const float* sc,
                                               const float* bc) {
  const bool q = p.nan_free && (p.out_kind == GemmOut::QInt8 || p.out_kind == GemmOut::QUInt8);
  if (q && ncols >= 16) {
    const int md = (p.out_kind == GemmOut::QUInt8 ? 4 : 0) + (p.relu ? 2 : 0) + (ncols <= 32 ? 1 : 0);
    switch (md) {
      case 0: return epilogue_rows64<false, false, false>(p, c, m, rows, n0, ncols, zc, sc, bc);
      case 1: return epilogue_rows64<false, false, true>(p, c, m, rows, n0, ncols, zc, sc, bc);
      case 2: return epilogue_rows64<false, true, false>(p, c, m, rows, n0, ncols, zc, sc, bc);
      case 3: return epilogue_rows64<false, true, true>(p, c, m, rows, n0, ncols, zc, sc, bc);
      case 4: return epilogue_rows64<true, false, false>(p, c, m, rows, n0, ncols, zc, sc, bc);
      case 5: return epilogue_rows64<true, false, true>(p, c, m, rows, n0, ncols, zc, sc, bc);
      case 6: return epilogue_rows64<true, true, false>(p, c, m, rows, n0, ncols, zc, sc, bc);
      default: return epilogue_rows64<true, true, true>(p, c, m, rows, n0, ncols, zc, sc, bc);
    }
  }
  for (int i = 0; i < rows; ++i) epilogue_row<true>(p, c + i * kNV * 16, m + i, n0, ncols, 0, 0.0f, zc, sc);
}

// micro's loop with row i of the activations at rows[i] (not a + i * lda), its K bytes in
// segs runs of 4 * gps bytes, run j at rows[i] + j * sstride: a convolution's receptive field
// read in place, one run per kernel row.
#define TQ_VNNI_SROW(i)                                                           \
  if constexpr (R > i) {                                                          \
    const __m512i x = bcast<Flip>(a##i + 4 * g, vflip);                           \
    acc##i##0 = _mm512_dpbusd_epi32(acc##i##0, x, w0);                            \
    if constexpr (NV > 1) acc##i##1 = _mm512_dpbusd_epi32(acc##i##1, x, w1);      \
    if constexpr (NV > 2) acc##i##2 = _mm512_dpbusd_epi32(acc##i##2, x, w2);      \
    if constexpr (NV > 3) acc##i##3 = _mm512_dpbusd_epi32(acc##i##3, x, w3);      \
  }
#define TQ_VNNI_STORE(i)                                                          \
  if constexpr (R > i) {                                                          \
    _mm512_storeu_si512(c + i * kNV * 16, acc##i##0);                             \
    if constexpr (NV > 1) _mm512_storeu_si512(c + i * kNV * 16 + 16, acc##i##1);  \
    if constexpr (NV > 2) _mm512_storeu_si512(c + i * kNV * 16 + 32, acc##i##2);  \
    if constexpr (NV > 3) _mm512_storeu_si512(c + i * kNV * 16 + 48, acc##i##3);  \
  }

template <int R, int NV, bool Flip>
TQ_TARGET_AVX512VNNI void micro_seg(const uint8_t* const* rows, const int8_t* b, int64_t pstride,
                                    int64_t segs, int64_t gps, int64_t sstride, int32_t* c) {
  const __m512i z = _mm512_setzero_si512();
  __m512i acc00 = z, acc01 = z, acc02 = z, acc03 = z, acc10 = z, acc11 = z, acc12 = z, acc13 = z,
          acc20 = z, acc21 = z, acc22 = z, acc23 = z, acc30 = z, acc31 = z, acc32 = z, acc33 = z,
          acc40 = z, acc41 = z, acc42 = z, acc43 = z, acc50 = z, acc51 = z, acc52 = z, acc53 = z;
  const __m512i vflip = _mm512_set1_epi32(static_cast<int32_t>(0x80808080u));
  __m512i w0 = z, w1 = z, w2 = z, w3 = z;
  const uint8_t *a0 = rows[0], *a1 = R > 1 ? rows[1] : a0, *a2 = R > 2 ? rows[2] : a0,
                *a3 = R > 3 ? rows[3] : a0, *a4 = R > 4 ? rows[4] : a0, *a5 = R > 5 ? rows[5] : a0;
  for (int64_t sg = 0; sg < segs; ++sg) {
    for (int64_t g = 0; g < gps; ++g) {
      const int8_t* bg = b + g * kGroup;
      w0 = _mm512_loadu_si512(bg);
      if constexpr (NV > 1) w1 = _mm512_loadu_si512(bg + pstride);
      if constexpr (NV > 2) w2 = _mm512_loadu_si512(bg + 2 * pstride);
      if constexpr (NV > 3) w3 = _mm512_loadu_si512(bg + 3 * pstride);
      TQ_VNNI_SROW(0)
      TQ_VNNI_SROW(1)
      TQ_VNNI_SROW(2)
      TQ_VNNI_SROW(3)
      TQ_VNNI_SROW(4)
      TQ_VNNI_SROW(5)
    }
    b += gps * kGroup;
    a0 += sstride;
    if constexpr (R > 1) a1 += sstride;
    if constexpr (R > 2) a2 += sstride;
    if constexpr (R > 3) a3 += sstride;
    if constexpr (R > 4) a4 += sstride;
    if constexpr (R > 5) a5 += sstride;
  }
  TQ_VNNI_STORE(0)
  TQ_VNNI_STORE(1)
  TQ_VNNI_STORE(2)
  TQ_VNNI_STORE(3)
  TQ_VNNI_STORE(4)
  TQ_VNNI_STORE(5)
}

#undef TQ_VNNI_SROW
#undef TQ_VNNI_STORE

using SegFn = void (*)(const uint8_t* const*, const int8_t*, int64_t, int64_t, int64_t, int64_t,
                       int32_t*);

template <int R, bool F>
constexpr SegFn seg_for(int nv) {
  return nv == 1 ? &micro_seg<R, 1, F> : nv == 2 ? &micro_seg<R, 2, F>
                                       : nv == 3 ? &micro_seg<R, 3, F> : &micro_seg<R, 4, F>;
}

template <bool F>
SegFn pick_seg_f(int rows, int nv) {
  switch (rows) {
    case 1: return seg_for<1, F>(nv);
    case 2: return seg_for<2, F>(nv);
    case 3: return seg_for<3, F>(nv);
    case 4: return seg_for<4, F>(nv);
    case 5: return seg_for<5, F>(nv);
    default: return seg_for<6, F>(nv);
  }
}

// The group's zero-point corrections and scales of columns [n0, n0 + ncols) (lanes past N: zero),
// once for all its row tiles: per-tensor activation qparams only.
TQ_TARGET_AVX512VNNI void panel_consts(const GemmProblem& p, int64_t n0, int64_t ncols,
                                       int32_t zp_shift, int32_t* zc, float* sc, float* bc) {
  const __m512i vzp = _mm512_set1_epi32(p.a_zp + zp_shift);
  const __m512 vas = _mm512_set1_ps(p.a_scale);
  for (int64_t j = 0; j < kNV * 16; j += 16) {
    const int64_t left = ncols - j;
    const __mmask16 k = left >= 16 ? __mmask16(0xFFFF)
                                   : left <= 0 ? __mmask16(0)
                                               : static_cast<__mmask16>((1u << left) - 1u);
    _mm512_store_si512(zc + j, _mm512_mullo_epi32(vzp, _mm512_maskz_loadu_epi32(k, p.col_sums + n0 + j)));
    if (p.out_kind != GemmOut::Int32) {
      _mm512_store_ps(sc + j, _mm512_mul_ps(vas, _mm512_maskz_loadu_ps(k, p.w_scale + n0 + j)));
      _mm512_store_ps(bc + j, p.bias != nullptr ? _mm512_maskz_loadu_ps(k, p.bias + n0 + j)
                                                : _mm512_setzero_ps());
    }
  }
}

}  // namespace

TQ_TARGET_AVX512VNNI void gemm_compute_segs__avx512vnni(const GemmProblem& p,
                                                        const uint8_t* const* rows, int64_t segs,
                                                        int64_t sstride, int64_t m0, int64_t m1,
                                                        int64_t p0, int64_t p1) {
  const int64_t gps = p.K / segs / 4, pstride = p.K * kPanel;
  const bool flip = !p.a_unsigned;
  const int32_t zp_shift = p.a_unsigned ? 0 : 128;
  alignas(64) int32_t c[kMR * kNV * 16] = {};  // zeroed: epilogue_rows64 may read unused panels (masked off)
  alignas(64) int32_t zc[kNV * 16];
  alignas(64) float sc[kNV * 16];
  alignas(64) float bc[kNV * 16];
  for (int64_t pp = p0; pp < p1; pp += kNV) {
    const int nv = static_cast<int>(p1 - pp < kNV ? p1 - pp : kNV);
    const int8_t* b = p.w + pp * pstride;
    const int64_t n0 = pp * kPanel;
    const int64_t ncols = (p.N - n0) < nv * kPanel ? (p.N - n0) : nv * kPanel;
    panel_consts(p, n0, ncols, zp_shift, zc, sc, bc);
    for (int64_t m = m0; m < m1; m += kMR) {
      const int nr = static_cast<int>(m1 - m < kMR ? m1 - m : kMR);
      (flip ? pick_seg_f<true>(nr, nv) : pick_seg_f<false>(nr, nv))(rows + (m - m0), b, pstride,
                                                                     segs, gps, sstride, c);
      epilogue_tile(p, c, m, nr, n0, ncols, zc, sc, bc);
    }
  }
}

int gemm_mr__avx512vnni() { return kMR; }

int64_t gemm_task_panels__avx512vnni() { return kNV; }

TQ_TARGET_AVX512VNNI void gemm_compute__avx512vnni(const GemmProblem& p, const void* a,
                                                   int64_t lda, int64_t m0, int64_t m1,
                                                   int64_t p0, int64_t p1) {
  const int64_t K = p.K, groups = K / 4, r = K % 4, pstride = K * kPanel;
  const uint32_t flip = p.a_unsigned ? 0u : 0x80808080u;
  const int32_t zp_shift = p.a_unsigned ? 0 : 128;
  alignas(64) int32_t c[kMR * kNV * 16] = {};  // zeroed: epilogue_rows64 may read unused panels (masked off)
  alignas(64) int8_t tw[kNV * kGroup];
  alignas(64) int32_t zc[kNV * 16];
  alignas(64) float sc[kNV * 16];
  alignas(64) float bc[kNV * 16];
  const bool per_tensor = p.a_zp_row == nullptr && p.a_scale_row == nullptr;
  int32_t ta[kMR];
  const auto* a8 = static_cast<const uint8_t*>(a);
  for (int64_t pp = p0; pp < p1; pp += kNV) {
    const int nv = static_cast<int>(p1 - pp < kNV ? p1 - pp : kNV);
    const int8_t* b = p.w + pp * pstride;
    if (r != 0) {  // the packed tail is [16][r]: spread it over a zero-padded 4-k group
      std::memset(tw, 0, sizeof(tw));
      for (int v = 0; v < nv; ++v) {
        const int8_t* src = b + v * pstride + groups * kGroup;
        for (int64_t ch = 0; ch < kPanel; ++ch)
          for (int64_t j = 0; j < r; ++j) tw[v * kGroup + ch * 4 + j] = src[ch * r + j];
      }
    }
    const int64_t n0 = pp * kPanel;
    const int64_t ncols = (p.N - n0) < nv * kPanel ? (p.N - n0) : nv * kPanel;
    // The group's corrections, scales and biases, once for all its row tiles (lanes past N:
    // zero; int32 output, int8_mm's packing path, has no scales).
    if (per_tensor) panel_consts(p, n0, ncols, zp_shift, zc, sc, bc);
    for (int64_t m = m0; m < m1; m += kMR) {
      const int rows = static_cast<int>(m1 - m < kMR ? m1 - m : kMR);
      if (r != 0) {
        for (int i = 0; i < rows; ++i) {
          uint32_t v = 0;
          std::memcpy(&v, a8 + (m + i) * lda + groups * 4, static_cast<size_t>(r));
          ta[i] = static_cast<int32_t>(v ^ flip);  // padded bytes meet zero weights
        }
      }
      pick_micro(rows, nv, flip != 0)(a8 + m * lda, lda, b, pstride, groups, c);
      if (r != 0) tail_group(rows, nv, ta, tw, c);
      if (per_tensor) {
        epilogue_tile(p, c, m, rows, n0, ncols, zc, sc, bc);
        continue;
      }
      for (int i = 0; i < rows; ++i) {
        {
          const int32_t zp = (p.a_zp_row ? p.a_zp_row[m + i] : p.a_zp) + zp_shift;
          const float s = p.a_scale_row ? p.a_scale_row[m + i] : p.a_scale;
          epilogue_row<false>(p, c + i * kNV * 16, m + i, n0, ncols, zp, s, nullptr, nullptr);
        }
      }
    }
  }
}

// Per-row quantization, the AVX2 sequence on 16 lanes with the K % 16 tail under a lane mask.
// With N = 10 (MNIST fc3) this pass is most of linear_dynamic's time.
TQ_TARGET_AVX512VNNI void quantize_rows__avx512vnni(const float* x, int64_t ldx, int64_t rows,
                                                    int64_t K, int32_t qmin, int32_t qmax,
                                                    int8_t* q, int64_t ldq, float* scale,
                                                    int32_t* zp) {
  const int64_t full = K / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (K - full)) - 1u);
  const __m512 lo = _mm512_set1_ps(static_cast<float>(qmin)),
               hi = _mm512_set1_ps(static_cast<float>(qmax));
  for (int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * ldx;
    // vminps(x, acc) returns acc when x is NaN, so NaN is ignored as in the scalar loop; acc
    // starts at +0 and never becomes -0; masked-off tail lanes keep acc. So the reduction gives
    // the scalar loop's mn and mx exactly.
    // Four accumulator pairs hide min/max latency. Min and max round nothing and the
    // accumulators hold neither NaN nor -0, so the order in which lanes and accumulators are
    // combined (here and in the horizontal reductions) cannot change the result.
    __m512 vmn = _mm512_setzero_ps(), vmx = _mm512_setzero_ps();
    __m512 vmn1 = vmn, vmx1 = vmx, vmn2 = vmn, vmx2 = vmx, vmn3 = vmn, vmx3 = vmx;
    int64_t k = 0;
    for (; k + 64 <= full; k += 64) {
      const __m512 v0 = _mm512_loadu_ps(xr + k), v1 = _mm512_loadu_ps(xr + k + 16);
      const __m512 v2 = _mm512_loadu_ps(xr + k + 32), v3 = _mm512_loadu_ps(xr + k + 48);
      vmn = _mm512_min_ps(v0, vmn);
      vmx = _mm512_max_ps(v0, vmx);
      vmn1 = _mm512_min_ps(v1, vmn1);
      vmx1 = _mm512_max_ps(v1, vmx1);
      vmn2 = _mm512_min_ps(v2, vmn2);
      vmx2 = _mm512_max_ps(v2, vmx2);
      vmn3 = _mm512_min_ps(v3, vmn3);
      vmx3 = _mm512_max_ps(v3, vmx3);
    }
    for (; k < full; k += 16) {
      const __m512 v = _mm512_loadu_ps(xr + k);
      vmn = _mm512_min_ps(v, vmn);
      vmx = _mm512_max_ps(v, vmx);
    }
    if (tail != 0) {
      const __m512 v = _mm512_maskz_loadu_ps(tail, xr + full);
      vmn = _mm512_mask_min_ps(vmn, tail, v, vmn);
      vmx = _mm512_mask_max_ps(vmx, tail, v, vmx);
    }
    vmn = _mm512_min_ps(_mm512_min_ps(vmn, vmn1), _mm512_min_ps(vmn2, vmn3));
    vmx = _mm512_max_ps(_mm512_max_ps(vmx, vmx1), _mm512_max_ps(vmx2, vmx3));
    const float mn = _mm512_reduce_min_ps(vmn), mx = _mm512_reduce_max_ps(vmx);
    rowwise_qparams(mn, mx, qmin, qmax, &scale[i], &zp[i]);
    const __m512 inv = _mm512_set1_ps(1.0f / scale[i]),
                 z = _mm512_set1_ps(static_cast<float>(zp[i]));
    int8_t* qr = q + i * ldq;
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 m = k < full ? __mmask16(0xFFFF) : tail;
      // quantize_val: round half to even, + zp, NaN -> zp, clamp; integers inside [qmin, qmax]
      // afterwards, so the conversion and the truncating byte store are exact.
      __m512 t = _mm512_add_ps(
          _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + k), inv),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
          z);
      const __mmask16 nan = _mm512_cmp_ps_mask(t, t, _CMP_UNORD_Q);
      t = _mm512_mask_blend_ps(nan, _mm512_min_ps(_mm512_max_ps(t, lo), hi), z);
      _mm512_mask_cvtepi32_storeu_epi8(qr + k, m, _mm512_cvtps_epi32(t));
    }
  }
}

// Packs panels [p0, p1) of w [N, K] read in place (row n at w + n * ldw, unit stride along K: a
// b = w.t() of int8_mm, or nn.Linear's weight): 16 rows of a panel are loaded 64 bytes (16
// groups of 4 k) at a time, and a 16 x 16 transpose of their int32 lanes gives the 16 packed
// groups, one vector each. Rows past N load nothing and pack as zeros; a last chunk of fewer
// than 16 groups loads under a byte mask. col_sums come from the packed vectors (vpdpbusd with
// ones: one lane per channel).
TQ_TARGET_AVX512VNNI void gemm_pack_weight_nk__avx512vnni(const int8_t* w, int64_t ldw, int64_t N,
                                                          int64_t K, int64_t p0, int64_t p1,
                                                          int8_t* packed, int32_t* col_sums) {
  const int64_t groups = K / 4, r = K % 4;
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t pp = p0; pp < p1; ++pp) {
    const int64_t c0 = pp * kPanel;
    const int64_t rows = N - c0 < kPanel ? N - c0 : kPanel;
    const int8_t* src = w + c0 * ldw;
    int8_t* panel = packed + pp * K * kPanel;
    __m512i sum = _mm512_setzero_si512();
    for (int64_t g0 = 0; g0 < groups; g0 += 16) {
      const int64_t ng = groups - g0 < 16 ? groups - g0 : 16;
      const __mmask64 km = ng == 16 ? ~__mmask64{0} : (__mmask64{1} << (4 * ng)) - 1;
      const int8_t* s = src + 4 * g0;
      // Row c of the panel, or zeros (mask 0 reads nothing) past N; then group g in v[g].
      __m512i v[16];
#pragma GCC unroll 16
      for (int c = 0; c < 16; ++c)
        v[c] = _mm512_maskz_loadu_epi8(c < rows ? km : 0, s + (c < rows ? c : 0) * ldw);
      transpose16_epi32(v);
      int8_t* d = panel + g0 * kGroup;
#pragma GCC unroll 16
      for (int g = 0; g < 16; ++g) {
        if (g < ng) {  // the rest belongs to the next chunk or the tail
          _mm512_storeu_si512(d + g * kGroup, v[g]);
          sum = _mm512_dpbusd_epi32(sum, ones, v[g]);
        }
      }
    }
    alignas(64) int32_t s[kPanel];
    _mm512_store_si512(s, sum);
    for (int64_t c = 0; c < kPanel; ++c) {  // the K % 4 tail: channel c's r values at c * r
      for (int64_t j = 0; j < r; ++j) {
        const int8_t v = c < rows ? src[c * ldw + 4 * groups + j] : int8_t{0};
        panel[groups * kGroup + c * r + j] = v;
        s[c] += v;
      }
      if (c < rows) col_sums[c0 + c] = s[c];
    }
  }
}

#else  // not x86: never selected; keep the symbols for one signature set.

int gemm_mr__avx512vnni() { return gemm_mr__scalar(); }
int64_t gemm_task_panels__avx512vnni() { return gemm_task_panels__scalar(); }
void gemm_compute__avx512vnni(const GemmProblem& p, const void* a, int64_t lda, int64_t m0,
                              int64_t m1, int64_t p0, int64_t p1) {
  gemm_compute__scalar(p, a, lda, m0, m1, p0, p1);
}
void quantize_rows__avx512vnni(const float* x, int64_t ldx, int64_t rows, int64_t K,
                               int32_t qmin, int32_t qmax, int8_t* q, int64_t ldq, float* scale,
                               int32_t* zp) {
  quantize_rows__scalar(x, ldx, rows, K, qmin, qmax, q, ldq, scale, zp);
}
void gemm_compute_segs__avx512vnni(const GemmProblem&, const uint8_t* const*, int64_t, int64_t,
                                   int64_t, int64_t, int64_t, int64_t) {}
void gemm_pack_weight_nk__avx512vnni(const int8_t* w, int64_t ldw, int64_t N, int64_t K,
                                     int64_t p0, int64_t p1, int8_t* packed, int32_t* col_sums) {
  const int64_t n1 = p1 * kPanel < N ? p1 * kPanel : N;
  gemm_pack_weight_cols(w, ldw, 1, N, K, p0 * kPanel, n1, packed, col_sums);
}
#endif

}  // namespace cpu
}  // namespace torchquant
