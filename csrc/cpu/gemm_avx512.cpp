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
// oracle, and a last partial chunk of columns runs the same sequence under a lane mask. A
// requantized output (int8 / uint8, per-tensor activation qparams) is computed inside the
// micro-kernel from the accumulators in registers (QTile); the other outputs go through an
// int32 tile and epilogue_row512 (epilogue_avx512.h).
#include <immintrin.h>

#include <cstring>

#include "cpu/epilogue_avx512.h"
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

// The fused epilogue must inline into the micro-kernel: a call would spill the live accumulators.
#define TQ_INLINE inline __attribute__((always_inline))

// The fused requantize of a register tile (int8 / uint8 out, nan_free, per-tensor activation
// qparams): the micro-kernel requantizes its accumulators while they are in registers and
// stores bytes, instead of storing the int32 tile for a separate epilogue pass. At small K
// (MobileNetV2's 16- and 32-channel 1x1 convolutions: 4 to 8 multiply-adds per accumulator)
// the epilogue is most of the work and that round trip a good part of it.
struct QTile {
  const int32_t* zc;  // [64] zero-point corrections of the tile's columns (past N: 0)
  const float* sc;    // [64] scales a_scale * w_scale (past N: 0)
  const float* bc;    // [64] biases, or +0.0 (past N: 0)
  uint8_t* out;       // column 0 of the tile's row 0 (dense) or of the problem's row 0
  int64_t ldo;        // bytes between output rows
  int64_t roff[kMR];  // tile row i's output at out + roff[i] (any rows: implicit GEMM tiles
                      // gather pixels of one padding class)
  bool dense;         // roff[i] = i * ldo: the tile's rows are consecutive (one store for 4)
  __mmask64 keep;     // the tile's real columns
  float inv;          // 1 / out_scale
  int16_t zp;         // out_zero_point
  bool u8, relu;
};

// Chunk j (16 columns) of a row's requantized t, and four chunks into 64 bytes: requant16 and
// requant_pack (epilogue_avx512.h) with the tile's constants.
TQ_TARGET_AVX512VNNI TQ_INLINE __m512i q16(const QTile& e, __m512i acc, int j) {
  return requant16(acc, e.zc + j, e.sc + j, e.bc + j, e.inv);
}

TQ_TARGET_AVX512VNNI TQ_INLINE __m512i q_pack(const QTile& e, __m512i t0, __m512i t1, __m512i t2,
                                           __m512i t3) {
  return requant_pack(t0, t1, t2, t3, e.zp, e.relu, e.u8);
}

// Row i of a tile of NV >= 2 panels (up to 64 columns).
template <int NV>
TQ_TARGET_AVX512VNNI TQ_INLINE void q_row(const QTile& e, int i, __m512i a0, __m512i a1, __m512i a2,
                                       __m512i a3) {
  const __m512i z = _mm512_setzero_si512();
  const __m512i bytes = q_pack(e, q16(e, a0, 0), q16(e, a1, 16), NV > 2 ? q16(e, a2, 32) : z,
                               NV > 3 ? q16(e, a3, 48) : z);
  uint8_t* dst = e.out + e.roff[i];
  if (e.keep == ~__mmask64{0}) {
    _mm512_storeu_si512(dst, bytes);
  } else {
    _mm512_mask_storeu_epi8(dst, e.keep, bytes);
  }
}

// Rows i .. i + n - 1 (n <= 4) of a one-panel tile (N <= 16: MobileNetV2's 16-channel
// projection): the rows are the four chunks of one pack, and four rows of 16 contiguous
// channels one 64-byte store.
template <int N>
TQ_TARGET_AVX512VNNI TQ_INLINE void q_rows1(const QTile& e, int i, __m512i r0, __m512i r1, __m512i r2,
                                         __m512i r3) {
  const __m512i z = _mm512_setzero_si512();
  const __m512i bytes = q_pack(e, q16(e, r0, 0), N > 1 ? q16(e, r1, 0) : z,
                               N > 2 ? q16(e, r2, 0) : z, N > 3 ? q16(e, r3, 0) : z);
  const __mmask16 k = static_cast<__mmask16>(e.keep);
  if (N == 4 && e.dense && e.ldo == 16 && k == __mmask16(0xFFFF)) {
    _mm512_storeu_si512(e.out + e.roff[i], bytes);
    return;
  }
  _mm_mask_storeu_epi8(e.out + e.roff[i], k, _mm512_castsi512_si128(bytes));
  if (N > 1) _mm_mask_storeu_epi8(e.out + e.roff[i + 1], k, _mm512_extracti32x4_epi32(bytes, 1));
  if (N > 2) _mm_mask_storeu_epi8(e.out + e.roff[i + 2], k, _mm512_extracti32x4_epi32(bytes, 2));
  if (N > 3) _mm_mask_storeu_epi8(e.out + e.roff[i + 3], k, _mm512_extracti32x4_epi32(bytes, 3));
}

// What one micro-kernel call multiplies and where its results go.
struct MicroArgs {
  // Row i of the activations: rows[i], or a + i * lda when rows is null. Its K bytes are segs
  // runs of 4 * gps bytes, run j at row + j * sstride: one run for a plain GEMM, one per kernel
  // row for a convolution's receptive field read in place (implicit GEMM). The tile reads gn
  // groups of each run from a_off on (gn < gps: kernel columns in the padding of all its
  // pixels; a_off and b then start at the first group read).
  const uint8_t* const* rows = nullptr;
  const uint8_t* a = nullptr;
  int64_t lda = 0, segs = 1, gps = 0, gn = 0, sstride = 0;
  int64_t a_off = 0;          // added to each rows[i] (the first byte this tile reads)
  const int8_t* b = nullptr;  // the first panel's packed weights (of the first group read)
  int64_t pstride = 0;        // bytes between panels
  // The K % 4 tail or null: per row one int32 of zero-padded (and, for int8, flipped)
  // activations, and per panel a zero-padded 4-k group of weights (64 bytes).
  const int32_t* ta = nullptr;
  const int8_t* tw = nullptr;
  int32_t* c = nullptr;      // the raw accumulators [kMR][kNV * 16] (unfused)
  const QTile* q = nullptr;  // the fused requantize (fused)
};

// The accumulators are named variables, not an array: GCC keeps an array of vectors indexed
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
#define TQ_VNNI_QROW(i)                                                           \
  if constexpr (R > i) q_row<NV>(*s.q, i, acc##i##0, acc##i##1, acc##i##2, acc##i##3);

// R rows x NV panels. Flip: int8 activations, xor-ed to uint8 on the way in; uint8 ones skip
// the xor: one vector op less per row and group, which matters when few panels share each
// broadcast (N <= 32). Q: the fused requantize (QTile) instead of the int32 store to s.c.
template <int R, int NV, bool Flip, bool Q>
TQ_TARGET_AVX512VNNI void micro(const MicroArgs& s) {
  const __m512i z = _mm512_setzero_si512();
  __m512i acc00 = z, acc01 = z, acc02 = z, acc03 = z, acc10 = z, acc11 = z, acc12 = z, acc13 = z,
          acc20 = z, acc21 = z, acc22 = z, acc23 = z, acc30 = z, acc31 = z, acc32 = z, acc33 = z,
          acc40 = z, acc41 = z, acc42 = z, acc43 = z, acc50 = z, acc51 = z, acc52 = z, acc53 = z;
  const __m512i vflip = _mm512_set1_epi32(static_cast<int32_t>(0x80808080u));
  __m512i w0 = z, w1 = z, w2 = z, w3 = z;
  const int64_t lda = s.lda, gps = s.gps, gn = s.gn, pstride = s.pstride, sstride = s.sstride;
  const uint8_t* const* rows = s.rows;
  auto row = [&](int i) { return rows != nullptr ? rows[i] + s.a_off : s.a + i * lda; };
  const uint8_t *a0 = row(0), *a1 = R > 1 ? row(1) : a0, *a2 = R > 2 ? row(2) : a0,
                *a3 = R > 3 ? row(3) : a0, *a4 = R > 4 ? row(4) : a0, *a5 = R > 5 ? row(5) : a0;
  const int8_t* b = s.b;
  for (int64_t sg = 0; sg < s.segs; ++sg) {
    for (int64_t g = 0; g < gn; ++g) {
      const int8_t* bg = b + g * kGroup;
      w0 = _mm512_loadu_si512(bg);
      if constexpr (NV > 1) w1 = _mm512_loadu_si512(bg + pstride);
      if constexpr (NV > 2) w2 = _mm512_loadu_si512(bg + 2 * pstride);
      if constexpr (NV > 3) w3 = _mm512_loadu_si512(bg + 3 * pstride);
      TQ_VNNI_ROW(0, bcast<Flip>(a0 + 4 * g, vflip))
      TQ_VNNI_ROW(1, bcast<Flip>(a1 + 4 * g, vflip))
      TQ_VNNI_ROW(2, bcast<Flip>(a2 + 4 * g, vflip))
      TQ_VNNI_ROW(3, bcast<Flip>(a3 + 4 * g, vflip))
      TQ_VNNI_ROW(4, bcast<Flip>(a4 + 4 * g, vflip))
      TQ_VNNI_ROW(5, bcast<Flip>(a5 + 4 * g, vflip))
    }
    b += gps * kGroup;
    a0 += sstride;
    if constexpr (R > 1) a1 += sstride;
    if constexpr (R > 2) a2 += sstride;
    if constexpr (R > 3) a3 += sstride;
    if constexpr (R > 4) a4 += sstride;
    if constexpr (R > 5) a5 += sstride;
  }
  if (s.ta != nullptr) {  // already flipped
    const int8_t* tw = s.tw;
    w0 = _mm512_loadu_si512(tw);
    if constexpr (NV > 1) w1 = _mm512_loadu_si512(tw + kGroup);
    if constexpr (NV > 2) w2 = _mm512_loadu_si512(tw + 2 * kGroup);
    if constexpr (NV > 3) w3 = _mm512_loadu_si512(tw + 3 * kGroup);
    TQ_VNNI_ROW(0, _mm512_set1_epi32(s.ta[0]))
    TQ_VNNI_ROW(1, _mm512_set1_epi32(s.ta[1]))
    TQ_VNNI_ROW(2, _mm512_set1_epi32(s.ta[2]))
    TQ_VNNI_ROW(3, _mm512_set1_epi32(s.ta[3]))
    TQ_VNNI_ROW(4, _mm512_set1_epi32(s.ta[4]))
    TQ_VNNI_ROW(5, _mm512_set1_epi32(s.ta[5]))
  }
  if constexpr (Q) {
    if constexpr (NV == 1) {
      q_rows1<(R < 4 ? R : 4)>(*s.q, 0, acc00, acc10, acc20, acc30);
      if constexpr (R > 4) q_rows1<R - 4>(*s.q, 4, acc40, acc50, z, z);
    } else {
      TQ_VNNI_QROW(0)
      TQ_VNNI_QROW(1)
      TQ_VNNI_QROW(2)
      TQ_VNNI_QROW(3)
      TQ_VNNI_QROW(4)
      TQ_VNNI_QROW(5)
    }
  } else {
    int32_t* c = s.c;
    TQ_VNNI_STORE(0)
    TQ_VNNI_STORE(1)
    TQ_VNNI_STORE(2)
    TQ_VNNI_STORE(3)
    TQ_VNNI_STORE(4)
    TQ_VNNI_STORE(5)
  }
}

#undef TQ_VNNI_ROW
#undef TQ_VNNI_STORE
#undef TQ_VNNI_QROW

using MicroFn = void (*)(const MicroArgs&);

template <int R, bool F, bool Q>
constexpr MicroFn micro_for(int nv) {
  return nv == 1 ? &micro<R, 1, F, Q> : nv == 2 ? &micro<R, 2, F, Q>
                                      : nv == 3 ? &micro<R, 3, F, Q> : &micro<R, 4, F, Q>;
}

template <bool F, bool Q>
MicroFn pick_micro_fq(int rows, int nv) {
  switch (rows) {
    case 1: return micro_for<1, F, Q>(nv);
    case 2: return micro_for<2, F, Q>(nv);
    case 3: return micro_for<3, F, Q>(nv);
    case 4: return micro_for<4, F, Q>(nv);
    case 5: return micro_for<5, F, Q>(nv);
    default: return micro_for<6, F, Q>(nv);
  }
}

MicroFn pick_micro(int rows, int nv, bool flip, bool q) {
  if (q) return flip ? pick_micro_fq<true, true>(rows, nv) : pick_micro_fq<false, true>(rows, nv);
  return flip ? pick_micro_fq<true, false>(rows, nv) : pick_micro_fq<false, false>(rows, nv);
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

// Output rows [m0, m1) x panels [p0, p1) on the micro-kernels: s describes row m0's activations
// (rows: one pointer per row from m0 on; or a, advanced here by lda per row).
// kSkip (implicit GEMM): seg_range holds per row from m0 on the runs [lo, hi) and (kPerm) the
// groups [glo, ghi) of each run it needs; a register tile reads the runs and groups that any
// of its rows needs, and skips those no row needs (kernel rows and columns that fall in the
// padding of every pixel of the tile, whose bytes are zeros that add nothing). kPerm: perm
// holds per row from m0 on the output row it computes (rows gathered by padding class);
// otherwise row m is output row m. Templates, not flags: at a few groups per tile (a 3-channel
// stem) each of these per-tile steps is a visible share of the tile's time.
template <bool kSkip, bool kPerm>
TQ_TARGET_AVX512VNNI void compute_rows(const GemmProblem& p, MicroArgs s, int64_t m0, int64_t m1,
                                       int64_t p0, int64_t p1, const int32_t* seg_range = nullptr,
                                       const int32_t* perm = nullptr) {
  const int64_t K = p.K, groups = K / 4, r = K % 4, pstride = K * kPanel;
  const uint32_t flip = p.a_unsigned ? 0u : 0x80808080u;
  const int32_t zp_shift = p.a_unsigned ? 0 : 128;
  alignas(64) int32_t c[kMR * kNV * 16];
  alignas(64) int8_t tw[kNV * kGroup];
  alignas(64) int32_t zc[kNV * 16];
  alignas(64) float sc[kNV * 16];
  alignas(64) float bc[kNV * 16];
  int32_t ta[kMR] = {};
  const bool per_tensor = p.a_zp_row == nullptr && p.a_scale_row == nullptr;
  const bool fuse = per_tensor && p.nan_free &&
                    (p.out_kind == GemmOut::QInt8 || p.out_kind == GemmOut::QUInt8);
  const EpiConsts512 e = epi_consts512(p);
  QTile qt;
  qt.zc = zc;
  qt.sc = sc;
  qt.bc = bc;
  qt.ldo = p.ldo;
  qt.inv = p.out_inv_scale;
  qt.zp = static_cast<int16_t>(p.out_zp);
  qt.u8 = p.out_kind == GemmOut::QUInt8;
  qt.relu = p.relu;
  s.pstride = pstride;
  s.gn = s.gps;
  s.c = c;
  s.q = &qt;
  qt.dense = !kPerm;
  for (int i = 0; i < kMR; ++i) qt.roff[i] = i * p.ldo;  // consecutive rows (kPerm: per tile)
  if (r != 0) {
    s.ta = ta;
    s.tw = tw;
  }
  const uint8_t* a0 = s.a;
  const uint8_t* const* rows0 = s.rows;
  for (int64_t pp = p0; pp < p1; pp += kNV) {
    const int nv = static_cast<int>(p1 - pp < kNV ? p1 - pp : kNV);
    s.b = p.w + pp * pstride;
    if (r != 0) {  // the packed tail is [16][r]: spread it over a zero-padded 4-k group
      std::memset(tw, 0, sizeof(tw));
      for (int v = 0; v < nv; ++v) {
        const int8_t* src = s.b + v * pstride + groups * kGroup;
        for (int64_t ch = 0; ch < kPanel; ++ch)
          for (int64_t j = 0; j < r; ++j) tw[v * kGroup + ch * 4 + j] = src[ch * r + j];
      }
    }
    const int64_t n0 = pp * kPanel;
    const int64_t ncols = (p.N - n0) < nv * kPanel ? (p.N - n0) : nv * kPanel;
    // The group's corrections, scales and biases, once for all its row tiles (lanes past N:
    // zero; int32 output, int8_mm's packing path, has no scales).
    if (per_tensor) panel_consts(p, n0, ncols, zp_shift, zc, sc, bc);
    qt.keep = ncols >= 64 ? ~__mmask64{0} : (__mmask64{1} << ncols) - 1;
    for (int64_t m = m0; m < m1; m += kMR) {
      const int nr = static_cast<int>(m1 - m < kMR ? m1 - m : kMR);
      if (rows0 != nullptr) {
        s.rows = rows0 + (m - m0);
      } else {
        s.a = a0 + (m - m0) * s.lda;
      }
      if (r != 0) {  // implicit GEMM rows are whole 4-byte groups: a plain GEMM's rows only
        for (int i = 0; i < nr; ++i) {
          uint32_t v = 0;
          std::memcpy(&v, s.a + i * s.lda + groups * 4, static_cast<size_t>(r));
          ta[i] = static_cast<int32_t>(v ^ flip);  // padded bytes meet zero weights
        }
      }
      if constexpr (!kPerm) {
        qt.out = static_cast<uint8_t*>(p.out) + m * p.ldo + n0;
      } else {
        qt.out = static_cast<uint8_t*>(p.out) + n0;
        for (int i = 0; i < nr; ++i) qt.roff[i] = perm[m - m0 + i] * p.ldo;
      }
      if constexpr (kSkip) {
        // The union of the rows' ranges.
        constexpr int kW = kPerm ? 4 : 2;  // int32 per row
        const int32_t* sr = seg_range + kW * (m - m0);
        int32_t lo = sr[0], hi = sr[1], glo = 0, ghi = static_cast<int32_t>(s.gps);
        for (int i = 1; i < nr; ++i) {
          lo = sr[kW * i] < lo ? sr[kW * i] : lo;
          hi = sr[kW * i + 1] > hi ? sr[kW * i + 1] : hi;
        }
        if constexpr (kPerm) {
          glo = sr[2];
          ghi = sr[3];
          for (int i = 1; i < nr; ++i) {
            glo = sr[4 * i + 2] < glo ? sr[4 * i + 2] : glo;
            ghi = sr[4 * i + 3] > ghi ? sr[4 * i + 3] : ghi;
          }
          if (ghi < glo) ghi = glo;
        }
        if (hi < lo) hi = lo;  // every row's range empty (all padding): no run
        s.segs = hi - lo;
        s.gn = ghi - glo;
        s.a_off = lo * s.sstride + 4 * glo;
        s.b = p.w + pp * pstride + (lo * s.gps + glo) * kGroup;
      }
      pick_micro(nr, nv, flip != 0, fuse)(s);
      if (fuse) continue;
      for (int i = 0; i < nr; ++i) {
        const int64_t mi = kPerm ? perm[m - m0 + i] : m + i;  // its output row
        if (per_tensor) {
          epilogue_row512<true>(p, e, c + i * kNV * 16, mi, n0, ncols, 0, 0.0f, zc, sc);
        } else {
          const int32_t zp = (p.a_zp_row ? p.a_zp_row[mi] : p.a_zp) + zp_shift;
          const float as = p.a_scale_row ? p.a_scale_row[mi] : p.a_scale;
          epilogue_row512<false>(p, e, c + i * kNV * 16, mi, n0, ncols, zp, as, nullptr, nullptr);
        }
      }
    }
  }
}

}  // namespace

TQ_TARGET_AVX512VNNI void gemm_compute_segs__avx512vnni(const GemmProblem& p,
                                                        const uint8_t* const* rows, int64_t segs,
                                                        int64_t sstride, int64_t m0, int64_t m1,
                                                        int64_t p0, int64_t p1,
                                                        const SegSkip* skip) {
  MicroArgs s;
  s.rows = rows;
  s.segs = segs;
  s.gps = p.K / segs / 4;
  s.sstride = sstride;
  if (skip == nullptr || skip->range == nullptr) {
    compute_rows<false, false>(p, s, m0, m1, p0, p1);
  } else if (skip->perm != nullptr) {
    compute_rows<true, true>(p, s, m0, m1, p0, p1, skip->range, skip->perm);
  } else {
    compute_rows<true, false>(p, s, m0, m1, p0, p1, skip->range);
  }
}

int gemm_mr__avx512vnni() { return kMR; }

int64_t gemm_task_panels__avx512vnni() { return kNV; }

TQ_TARGET_AVX512VNNI void gemm_compute__avx512vnni(const GemmProblem& p, const void* a,
                                                   int64_t lda, int64_t m0, int64_t m1,
                                                   int64_t p0, int64_t p1) {
  MicroArgs s;
  s.a = static_cast<const uint8_t*>(a) + m0 * lda;
  s.lda = lda;
  s.gps = p.K / 4;
  compute_rows<false, false>(p, s, m0, m1, p0, p1);
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
                                   int64_t, int64_t, int64_t, int64_t, const SegSkip*) {}
void gemm_pack_weight_nk__avx512vnni(const int8_t* w, int64_t ldw, int64_t N, int64_t K,
                                     int64_t p0, int64_t p1, int8_t* packed, int32_t* col_sums) {
  const int64_t n1 = p1 * kPanel < N ? p1 * kPanel : N;
  gemm_pack_weight_cols(w, ldw, 1, N, K, p0 * kPanel, n1, packed, col_sums);
}
#endif

}  // namespace cpu
}  // namespace torchquant
