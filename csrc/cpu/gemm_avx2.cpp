// AVX2 int8 GEMM, exact for full 8-bit activations: both operands are widened to int16 and
// multiplied with vpmaddwd, which adds two int16 x int16 products into an int32 lane. Each
// product is at most 255 * 128 = 32640 in magnitude, so a pair sum (<= 65280) cannot saturate,
// unlike vpmaddubsw's int16 pair sums (2 * 255 * 127 > 32767). The accumulators wrap modulo
// 2^32 and the corrected value is exact for K <= kMaxK.
//
// An activation tile (kMR = 4 rows) is widened once into int16, laid out [group][row][4 k], so
// that the inner loop broadcasts a row's 4 values with one 64-bit load. A 16-byte slice of a
// packed 4-k group is 4 channels x 4 k; widened, vpmaddwd gives each channel two partial sums
// (k0 + k1, k2 + k3), which a horizontal add folds at the end. Register tile: 4 rows x 8
// channels = 8 accumulators + 2 weight vectors + broadcasts of the 16 ymm registers (with 6
// rows GCC hoists the broadcasts and spills accumulators, which costs more than it gains).
//
// Unsigned activations that all lie in [0, 127] (a tile of rows quantized with reduce_range=True,
// torch.ao's x86 default: 7-bit activations) take a second inner loop: vpmaddubsw multiplies the
// bytes as they are, uint8 activation x int8 weight, and adds adjacent products into an int16
// lane. With x <= 127 a pair sum is at most 2 * 127 * 128 = 32512 in magnitude: no saturation,
// and the sums are exact. vpmaddwd with ones then adds the two pairs of each 4-k group into the
// channel's int32 lane. That is 32 products per vpmaddubsw where vpmaddwd gives 16, and the
// activations need no widening: the tile is read in place, a 4-byte broadcast per row and group,
// against all 16 channels of a panel. A tile holding any byte above 127 takes the vpmaddwd loop:
// the check (an OR over the tile's bytes) decides per tile, so the results never depend on it.
//
// AVX-VNNI (gemm_compute__avxvnni, CPUs with AVX-VNNI and no AVX-512): every tile takes the
// 7-bit loop's form, 6 rows x 16 channels, with vpdpbusd in place of vpmaddubsw + vpmaddwd +
// vpaddd (K = N = 4096 on two Zen 5 cores: 340-395 G multiply-adds/s against the 8-bit AVX2
// loop's 115-160; resnet18 b1 7.2 ms with 4-row tiles, 5.6 ms with 6): uint8 activations
// x int8 weights, four products added into the int32 lane without an int16 step, so exact for
// full 8-bit activations, 32 products per instruction. Signed (int8) activations are made
// unsigned by flipping their top bit in the broadcast (x + 128), and 128 * col_sums[n] is taken
// off each accumulator before the epilogue (wrapping as gemm_correct).
//
// The epilogue repeats gemm_dequant / quantize_val with the same float32 operations in the same
// order (no FMA), so outputs are bit-identical to the scalar oracle; the last N % 8 columns
// go through the oracle itself.
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "cpu/epilogue_avx2.h"
#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

constexpr int kMR = 4;
constexpr int64_t kGroup = 64;

TQ_TARGET_AVX2 inline int64_t load8(const int16_t* p) {
  int64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Widens `rows` rows of K activations into tile[g][i][j] = a[i][4g + j] as int16, the last
// group padded with zeros.
TQ_TARGET_AVX2 void pack_tile(const uint8_t* a, int64_t lda, bool u, int rows, int64_t K,
                              int16_t* tile) {
  const int64_t groups = K / 4, r = K % 4;
  for (int i = 0; i < rows; ++i) {
    const uint8_t* row = a + i * lda;
    int64_t g = 0;
    for (; g + 4 <= groups; g += 4) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 4 * g));
      const __m256i w = u ? _mm256_cvtepu8_epi16(bytes) : _mm256_cvtepi8_epi16(bytes);
      alignas(32) int64_t q[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(q), w);
      for (int j = 0; j < 4; ++j) std::memcpy(tile + ((g + j) * kMR + i) * 4, &q[j], 8);
    }
    for (; g < groups; ++g) {
      for (int j = 0; j < 4; ++j) {
        const uint8_t b = row[4 * g + j];
        tile[(g * kMR + i) * 4 + j] = u ? int16_t{b} : int16_t{static_cast<int8_t>(b)};
      }
    }
    if (r != 0) {
      for (int j = 0; j < 4; ++j) {
        const uint8_t b = j < r ? row[4 * groups + j] : 0;
        tile[(groups * kMR + i) * 4 + j] = u ? int16_t{b} : int16_t{static_cast<int8_t>(b)};
      }
    }
  }
}

// c[R][8] = accumulators of 8 channels whose 4-k groups start at b (stride 64 bytes). Named accumulators, not an array: GCC keeps
// an array of vectors indexed in a loop in memory.
#define TQ_AVX2_ROW(i, G)                                                            \
  if constexpr (R > i) {                                                             \
    const __m256i x = _mm256_set1_epi64x(load8(tile + ((G) * kMR + i) * 4));         \
    acc##i##0 = _mm256_add_epi32(acc##i##0, _mm256_madd_epi16(w0, x));               \
    acc##i##1 = _mm256_add_epi32(acc##i##1, _mm256_madd_epi16(w1, x));               \
  }
// hadd gives [c0 c1 c4 c5 | c2 c3 c6 c7] (64-bit pairs q0 q1 | q2 q3); 0xD8 orders q0 q2 q1 q3.
#define TQ_AVX2_STORE(i)                                                             \
  if constexpr (R > i) {                                                             \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + i * 8),                       \
                        _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc##i##0, acc##i##1), 0xD8)); \
  }

template <int R>
TQ_TARGET_AVX2 void micro(const int16_t* tile, const int8_t* b, int64_t groups, int32_t* c) {
  const __m256i z = _mm256_setzero_si256();
  __m256i acc00 = z, acc01 = z, acc10 = z, acc11 = z, acc20 = z, acc21 = z, acc30 = z, acc31 = z,
          acc40 = z, acc41 = z, acc50 = z, acc51 = z;
  for (int64_t g = 0; g < groups; ++g) {
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + g * kGroup)));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + g * kGroup + 16)));
    TQ_AVX2_ROW(0, g)
    TQ_AVX2_ROW(1, g)
    TQ_AVX2_ROW(2, g)
    TQ_AVX2_ROW(3, g)
    TQ_AVX2_ROW(4, g)
    TQ_AVX2_ROW(5, g)
  }
  TQ_AVX2_STORE(0)
  TQ_AVX2_STORE(1)
  TQ_AVX2_STORE(2)
  TQ_AVX2_STORE(3)
  TQ_AVX2_STORE(4)
  TQ_AVX2_STORE(5)
}

#undef TQ_AVX2_ROW
#undef TQ_AVX2_STORE

using MicroFn = void (*)(const int16_t*, const int8_t*, int64_t, int32_t*);

// A panel's packed K % 4 tail (src: [16][r], channel c's r values at c * r) spread over a
// zero-padded 4-k group tw[64] (channel c's values at 4c .. 4c + r - 1), the layout of a full group.
inline void spread_tail(const int8_t* src, int64_t r, int8_t* tw) {
  std::memset(tw, 0, kGroup);
  for (int64_t ch = 0; ch < kPanel; ++ch)
    for (int64_t j = 0; j < r; ++j) tw[ch * 4 + j] = src[ch * r + j];
}

// Adds the tail group (K % 4 != 0, tile group `g`, zero-padded weights tw) to c[rows][8].
TQ_TARGET_AVX2 void tail_group(int rows, const int16_t* tile, int64_t g, const int8_t* tw,
                               int32_t* c) {
  const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tw)));
  const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tw + 16)));
  for (int i = 0; i < rows; ++i) {
    const __m256i x = _mm256_set1_epi64x(load8(tile + (g * kMR + i) * 4));
    const __m256i s = _mm256_permute4x64_epi64(
        _mm256_hadd_epi32(_mm256_madd_epi16(w0, x), _mm256_madd_epi16(w1, x)), 0xD8);
    __m256i* ci = reinterpret_cast<__m256i*>(c + i * 8);
    _mm256_storeu_si256(ci, _mm256_add_epi32(_mm256_loadu_si256(ci), s));
  }
}

// 7-bit activations (see the top of the file): c[R][16] = the accumulators of a whole panel's 16
// channels for R rows of unsigned activations in [0, 127], row i at a + i * lda (read in place).
#define TQ_AVX2_ROW7(i)                                                                        \
  if constexpr (R > i) {                                                                       \
    int32_t xi;                                                                                \
    std::memcpy(&xi, a + i * lda + 4 * g, 4);                                                  \
    const __m256i x = _mm256_set1_epi32(xi);                                                   \
    acc##i##0 = _mm256_add_epi32(acc##i##0, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w0), ones)); \
    acc##i##1 = _mm256_add_epi32(acc##i##1, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w1), ones)); \
  }
#define TQ_AVX2_STORE7(i)                                                                      \
  if constexpr (R > i) {                                                                       \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + i * 16), acc##i##0);                    \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + i * 16 + 8), acc##i##1);                \
  }

template <int R>
TQ_TARGET_AVX2 void micro7(const uint8_t* a, int64_t lda, const int8_t* b, int64_t groups,
                           int32_t* c) {
  const __m256i z = _mm256_setzero_si256(), ones = _mm256_set1_epi16(1);
  __m256i acc00 = z, acc01 = z, acc10 = z, acc11 = z, acc20 = z, acc21 = z, acc30 = z, acc31 = z;
  for (int64_t g = 0; g < groups; ++g) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * kGroup));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * kGroup + 32));
    TQ_AVX2_ROW7(0)
    TQ_AVX2_ROW7(1)
    TQ_AVX2_ROW7(2)
    TQ_AVX2_ROW7(3)
  }
  TQ_AVX2_STORE7(0)
  TQ_AVX2_STORE7(1)
  TQ_AVX2_STORE7(2)
  TQ_AVX2_STORE7(3)
}

#undef TQ_AVX2_ROW7
#undef TQ_AVX2_STORE7

using Micro7Fn = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int32_t*);

Micro7Fn pick_micro7(int rows) {
  switch (rows) {
    case 1: return &micro7<1>;
    case 2: return &micro7<2>;
    case 3: return &micro7<3>;
    default: return &micro7<4>;
  }
}

// True when every one of `rows` rows of K bytes (row i at a + i * lda) is at most 127.
TQ_TARGET_AVX2 bool rows_are_7bit(const uint8_t* a, int64_t lda, int rows, int64_t K) {
  __m256i acc = _mm256_setzero_si256();
  uint8_t tail = 0;
  for (int i = 0; i < rows; ++i) {
    const uint8_t* row = a + i * lda;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32)
      acc = _mm256_or_si256(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k)));
    for (; k < K; ++k) tail = static_cast<uint8_t>(tail | row[k]);
  }
  return _mm256_movemask_epi8(acc) == 0 && tail < 128;
}

// c[0 .. 15] from the pair sums of channels 0-3, 4-7, 8-11, 12-15 (two int32 lanes each): hadd
// gives [c0 c1 c4 c5 | c2 c3 c6 c7] (64-bit pairs q0 q1 | q2 q3); 0xD8 orders q0 q2 q1 q3.
TQ_TARGET_AVX2 inline void store16(int32_t* c, __m256i q0, __m256i q1, __m256i q2, __m256i q3) {
  const __m256i lo = _mm256_permute4x64_epi64(_mm256_hadd_epi32(q0, q1), 0xD8);
  const __m256i hi = _mm256_permute4x64_epi64(_mm256_hadd_epi32(q2, q3), 0xD8);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), lo);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 8), hi);
}

// One or two rows (decode-style calls, recurrent steps): c[R][16] = the accumulators of a whole
// panel in one pass over its weights, each 64-byte group read once, in order, with the next
// groups prefetched. The half-panel loop above reads every line of the panel twice, 32 bytes at
// a time, which at one row left the weights' stream at a third of the memory's rate.
template <int R>
TQ_TARGET_AVX2 void micro16(const int16_t* tile, const int8_t* b, int64_t groups, int32_t* c) {
  static_assert(R == 1 || R == 2, "one or two rows");
  const __m256i z = _mm256_setzero_si256();
  __m256i a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
  constexpr int64_t kAhead = 8;  // groups (512 bytes) ahead
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* bg = b + g * kGroup;
    if (g + kAhead < groups) _mm_prefetch(reinterpret_cast<const char*>(bg + kAhead * kGroup), _MM_HINT_T0);
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bg)));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bg + 16)));
    const __m256i w2 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bg + 32)));
    const __m256i w3 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bg + 48)));
    const __m256i x0 = _mm256_set1_epi64x(load8(tile + (g * kMR) * 4));
    a00 = _mm256_add_epi32(a00, _mm256_madd_epi16(w0, x0));
    a01 = _mm256_add_epi32(a01, _mm256_madd_epi16(w1, x0));
    a02 = _mm256_add_epi32(a02, _mm256_madd_epi16(w2, x0));
    a03 = _mm256_add_epi32(a03, _mm256_madd_epi16(w3, x0));
    if constexpr (R > 1) {
      const __m256i x1 = _mm256_set1_epi64x(load8(tile + (g * kMR + 1) * 4));
      a10 = _mm256_add_epi32(a10, _mm256_madd_epi16(w0, x1));
      a11 = _mm256_add_epi32(a11, _mm256_madd_epi16(w1, x1));
      a12 = _mm256_add_epi32(a12, _mm256_madd_epi16(w2, x1));
      a13 = _mm256_add_epi32(a13, _mm256_madd_epi16(w3, x1));
    }
  }
  store16(c, a00, a01, a02, a03);
  if constexpr (R > 1) store16(c + 16, a10, a11, a12, a13);
}

MicroFn pick_micro(int rows) {
  switch (rows) {
    case 1: return &micro<1>;
    case 2: return &micro<2>;
    case 3: return &micro<3>;
    default: return &micro<4>;
  }
}

TQ_TARGET_AVX2 void epilogue_row(const GemmProblem& p, const int32_t* acc, int64_t m, int64_t n0,
                                 int64_t ncols, int32_t zp, float a_scale) {
  const __m256i vzp = _mm256_set1_epi32(zp);
  const __m256 vas = _mm256_set1_ps(a_scale);
  const EpiConsts256 e = epi_consts256(p);
  int64_t j = 0;
  for (; j + 8 <= ncols; j += 8) {
    const int64_t n = n0 + j;
    const __m256i cs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.col_sums + n));
    const __m256i corr = _mm256_sub_epi32(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + j)), _mm256_mullo_epi32(vzp, cs));
    const __m256 s = p.out_kind == GemmOut::Int32 ? e.zero
                                                  : _mm256_mul_ps(vas, _mm256_loadu_ps(p.w_scale + n));
    epilogue_chunk8(p, e, corr, s, p.bias != nullptr ? p.bias + n : nullptr, m * p.ldo + n);
  }
  for (; j < ncols; ++j) {
    gemm_epilogue_one(p, m, n0 + j, gemm_correct(acc[j], zp, p.col_sums[n0 + j]), a_scale);
  }
}

// One chunk of 8 int8 / uint8 outputs as int32 lanes: epilogue_chunk8's operations.
template <bool RELU, bool BIAS, bool NANFREE>
TQ_TARGET_AVX2 inline __m256i q8_chunk(__m256i acc, __m256i zc, __m256 sc, const float* bias, const EpiConsts256& e) {
  const __m256 y = dequant_lanes(_mm256_sub_epi32(acc, zc), sc, BIAS, BIAS ? _mm256_loadu_ps(bias) : e.zero, RELU);
  return quant_lanes(y, e, NANFREE);
}

// epilogue_rows for int8 / uint8 output with per-tensor activation qparams and ncols a multiple
// of 8: epilogue_chunk8's operations in its order (NaN -> zero point only where a NaN can arise),
// two chunks of a row packed and stored together.
template <bool U8, bool RELU, bool BIAS, bool NANFREE>
TQ_TARGET_AVX2 void epilogue_rows_q8(const GemmProblem& p, const int32_t* c, int64_t ldc, int rows,
                                     int64_t m, int64_t n0, int64_t ncols) {
  const EpiConsts256 e = epi_consts256(p);
  const __m256i vzp = _mm256_set1_epi32(p.a_zp);
  const __m256 vas = _mm256_set1_ps(p.a_scale);
  uint8_t* out = static_cast<uint8_t*>(p.out);
  const int64_t ldo = p.ldo;
  const int32_t* cs = p.col_sums;
  const float* ws = p.w_scale;
  const float* bs = p.bias;
  for (int64_t j = 0; j + 16 <= ncols; j += 16) {
    const int64_t n = n0 + j;
    const __m256i* csv = reinterpret_cast<const __m256i*>(cs + n);
    const __m256i zc0 = _mm256_mullo_epi32(vzp, _mm256_loadu_si256(csv));
    const __m256i zc1 = _mm256_mullo_epi32(vzp, _mm256_loadu_si256(csv + 1));
    const __m256 sc0 = _mm256_mul_ps(vas, _mm256_loadu_ps(ws + n));
    const __m256 sc1 = _mm256_mul_ps(vas, _mm256_loadu_ps(ws + n + 8));
    for (int i = 0; i < rows; ++i) {
      const int32_t* ci = c + i * ldc + j;
      const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ci));
      const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ci + 8));
      const __m256i q0 = q8_chunk<RELU, BIAS, NANFREE>(a0, zc0, sc0, bs + n, e);
      const __m256i q1 = q8_chunk<RELU, BIAS, NANFREE>(a1, zc1, sc1, bs + n + 8, e);
      // Integers inside the 8-bit type: both packs are exact. packs gives [q0 0-3, q1 0-3 | q0 4-7,
      // q1 4-7]; 0xD8 orders the 64-bit pairs into columns 0-15; the byte pack repeats each lane,
      // and 0x08 brings lanes 0 and 2 (columns 0-7, 8-15) together.
      const __m256i h = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);
      const __m256i bytes = U8 ? _mm256_packus_epi16(h, h) : _mm256_packs_epi16(h, h);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (m + i) * ldo + n),
                       _mm256_castsi256_si128(_mm256_permute4x64_epi64(bytes, 0x08)));
    }
  }
  if (ncols % 16 != 0) {  // a last chunk of 8 columns
    const int64_t j = ncols - 8, n = n0 + j;
    const __m256i zc = _mm256_mullo_epi32(vzp, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cs + n)));
    const __m256 sc = _mm256_mul_ps(vas, _mm256_loadu_ps(ws + n));
    for (int i = 0; i < rows; ++i) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i * ldc + j));
      const __m256i q = q8_chunk<RELU, BIAS, NANFREE>(a, zc, sc, bs + n, e);
      const __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + (m + i) * ldo + n),
                       U8 ? _mm_packus_epi16(h, h) : _mm_packs_epi16(h, h));
    }
  }
}

// Output rows [m, m + rows) x columns [n0, n0 + ncols) (ncols <= 16) from c (row i at c + i * ldc).
// With per-tensor activation qparams the zero-point correction zp * col_sums and the scale
// products a_scale * w_scale are the same for every row: made once per call here, not once per
// row and chunk (at small K, a 1x1 convolution's 24 input channels, the epilogue was four times
// the multiply-adds). The same float32 operations on the same values: the same bits.
TQ_TARGET_AVX2 void epilogue_rows(const GemmProblem& p, const int32_t* c, int64_t ldc, int rows,
                                  int64_t m, int64_t n0, int64_t ncols) {
  if (p.a_zp_row != nullptr || p.a_scale_row != nullptr || p.out_kind == GemmOut::Int32 ||
      ncols % 8 != 0) {
    for (int i = 0; i < rows; ++i) {
      const int32_t zp = p.a_zp_row ? p.a_zp_row[m + i] : p.a_zp;
      const float s = p.a_scale_row ? p.a_scale_row[m + i] : p.a_scale;
      epilogue_row(p, c + i * ldc, m + i, n0, ncols, zp, s);
    }
    return;
  }
  if (p.out_kind == GemmOut::QUInt8 || p.out_kind == GemmOut::QInt8) {
    const bool u8 = p.out_kind == GemmOut::QUInt8, b = p.bias != nullptr;
    // (the output kind, ReLU, bias and NaN-freedom as template arguments: no branch, and no
    // reload of p's fields after each store through the byte pointer, which may alias them)
#define TQ_Q8(U8, RELU, BIAS, NF)                                              \
  if (u8 == U8 && p.relu == RELU && b == BIAS && p.nan_free == NF)             \
    return epilogue_rows_q8<U8, RELU, BIAS, NF>(p, c, ldc, rows, m, n0, ncols);
    TQ_Q8(true, true, true, true) TQ_Q8(true, true, true, false) TQ_Q8(true, true, false, true)
    TQ_Q8(true, true, false, false) TQ_Q8(true, false, true, true) TQ_Q8(true, false, true, false)
    TQ_Q8(true, false, false, true) TQ_Q8(true, false, false, false) TQ_Q8(false, true, true, true)
    TQ_Q8(false, true, true, false) TQ_Q8(false, true, false, true) TQ_Q8(false, true, false, false)
    TQ_Q8(false, false, true, true) TQ_Q8(false, false, true, false) TQ_Q8(false, false, false, true)
    TQ_Q8(false, false, false, false)
#undef TQ_Q8
  }
  const EpiConsts256 e = epi_consts256(p);
  const __m256i vzp = _mm256_set1_epi32(p.a_zp);
  const __m256 vas = _mm256_set1_ps(p.a_scale);
  for (int64_t j = 0; j < ncols; j += 8) {
    const int64_t n = n0 + j;
    const __m256i cs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.col_sums + n));
    const __m256i zc = _mm256_mullo_epi32(vzp, cs);
    const __m256 sc = _mm256_mul_ps(vas, _mm256_loadu_ps(p.w_scale + n));
    const float* bias = p.bias != nullptr ? p.bias + n : nullptr;
    for (int i = 0; i < rows; ++i) {
      const __m256i acc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i * ldc + j));
      epilogue_chunk8(p, e, _mm256_sub_epi32(acc, zc), sc, bias, (m + i) * p.ldo + n);
    }
  }
}

// Output rows [m, m + rows <= 2) for panels [p0, p1) from a widened tile (micro16).
TQ_TARGET_AVX2 void compute_tile16(const GemmProblem& p, const int16_t* tile, int rows, int64_t m,
                                   int64_t p0, int64_t p1) {
  const int64_t K = p.K, groups = K / 4, r = K % 4, pstride = K * kPanel;
  alignas(32) int32_t c[2 * 16];
  alignas(32) int8_t tw[kGroup];
  for (int64_t pp = p0; pp < p1 && pp * kPanel < p.N; ++pp) {
    const int8_t* b = p.w + pp * pstride;
    if (rows == 1) micro16<1>(tile, b, groups, c);
    else micro16<2>(tile, b, groups, c);
    if (r != 0) {
      spread_tail(b + groups * kGroup, r, tw);
      alignas(32) int32_t ct[2 * 16];
      // (the tile's tail group g = groups, as the row's only group)
      if (rows == 1) micro16<1>(tile + groups * kMR * 4, tw, 1, ct);
      else micro16<2>(tile + groups * kMR * 4, tw, 1, ct);
      for (int i = 0; i < rows * 16; ++i)
        c[i] = static_cast<int32_t>(static_cast<uint32_t>(c[i]) + static_cast<uint32_t>(ct[i]));
    }
    const int64_t n0 = pp * kPanel;
    epilogue_rows(p, c, 16, rows, m, n0, p.N - n0 < kPanel ? p.N - n0 : kPanel);
  }
}

// AVX-VNNI: c[R][16] = a whole panel's accumulators for R rows (row i at a + i * lda, read in
// place), the bytes xor flip (0x80 per byte for int8 activations, 0 for uint8) as unsigned.
#define TQ_AVXVNNI_ROW(i)                                                                      \
  if constexpr (R > i) {                                                                       \
    int32_t xi;                                                                                \
    std::memcpy(&xi, a + i * lda + 4 * g, 4);                                                  \
    const __m256i x = FLIP ? _mm256_xor_si256(_mm256_set1_epi32(xi), flip) : _mm256_set1_epi32(xi); \
    acc##i##0 = _mm256_dpbusd_avx_epi32(acc##i##0, x, w0);                                     \
    acc##i##1 = _mm256_dpbusd_avx_epi32(acc##i##1, x, w1);                                     \
  }
#define TQ_AVXVNNI_STORE(i)                                                                    \
  if constexpr (R > i) {                                                                       \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + i * 16), acc##i##0);                    \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + i * 16 + 8), acc##i##1);                \
  }

// Up to kMRV = 6 rows: 12 accumulators, 2 weight vectors and a broadcast fill the 16 ymm
// registers (FLIP, for int8 activations, needs one more for the flip constant).
constexpr int kMRV = 6;

template <int R, bool FLIP>
TQ_TARGET_AVXVNNI void micro_vnni(const uint8_t* a, int64_t lda, const int8_t* b, int64_t groups,
                                  int32_t* c) {
  const __m256i z = _mm256_setzero_si256(), flip = _mm256_set1_epi32(static_cast<int32_t>(0x80808080u));
  __m256i acc00 = z, acc01 = z, acc10 = z, acc11 = z, acc20 = z, acc21 = z, acc30 = z, acc31 = z;
  __m256i acc40 = z, acc41 = z, acc50 = z, acc51 = z;
  for (int64_t g = 0; g < groups; ++g) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * kGroup));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * kGroup + 32));
    TQ_AVXVNNI_ROW(0)
    TQ_AVXVNNI_ROW(1)
    TQ_AVXVNNI_ROW(2)
    TQ_AVXVNNI_ROW(3)
    TQ_AVXVNNI_ROW(4)
    TQ_AVXVNNI_ROW(5)
  }
  TQ_AVXVNNI_STORE(0)
  TQ_AVXVNNI_STORE(1)
  TQ_AVXVNNI_STORE(2)
  TQ_AVXVNNI_STORE(3)
  TQ_AVXVNNI_STORE(4)
  TQ_AVXVNNI_STORE(5)
}

#undef TQ_AVXVNNI_ROW
#undef TQ_AVXVNNI_STORE

template <bool FLIP>
Micro7Fn pick_micro_vnni(int rows) {
  switch (rows) {
    case 1: return &micro_vnni<1, FLIP>;
    case 2: return &micro_vnni<2, FLIP>;
    case 3: return &micro_vnni<3, FLIP>;
    case 4: return &micro_vnni<4, FLIP>;
    case 5: return &micro_vnni<5, FLIP>;
    default: return &micro_vnni<6, FLIP>;
  }
}

// Output rows [m, m + rows) (rows <= kMRV) for panels [p0, p1), the activations read in place
// by `fn`, a whole panel's 16 channels per call (and the K % 4 tail through fn(ta, 4, tw, 1)):
// micro7 for 7-bit unsigned tiles (rows_are_7bit), micro_vnni for any. `flipped`: fn read int8
// activations as x + 128, so 128 * col_sums[n] comes off (sum (x + 128) w - 128 sum w).
TQ_TARGET_AVX2 void compute_tile_inplace(const GemmProblem& p, const uint8_t* a, int64_t lda, int rows,
                                         int64_t m, int64_t p0, int64_t p1, Micro7Fn fn, bool flipped) {
  const int64_t K = p.K, groups = K / 4, r = K % 4, pstride = K * kPanel;
  alignas(32) int32_t c[kMRV * 16];
  alignas(32) int8_t tw[kGroup];
  // The K % 4 tail of each row, zero-padded to a 4-byte group ([row][4]); the padding's
  // weights are 0, so its (flipped) bytes add nothing.
  alignas(32) uint8_t ta[kMRV * 4] = {};
  for (int i = 0; i < rows && r != 0; ++i)
    for (int64_t j = 0; j < r; ++j) ta[i * 4 + j] = a[i * lda + 4 * groups + j];
  for (int64_t pp = p0; pp < p1 && pp * kPanel < p.N; ++pp) {
    const int8_t* b = p.w + pp * pstride;
    fn(a, lda, b, groups, c);
    if (r != 0) {
      spread_tail(b + groups * kGroup, r, tw);
      alignas(32) int32_t ct[kMRV * 16];
      fn(ta, 4, tw, 1, ct);
      for (int i = 0; i < rows * 16; ++i)
        c[i] = static_cast<int32_t>(static_cast<uint32_t>(c[i]) + static_cast<uint32_t>(ct[i]));
    }
    const int64_t n0 = pp * kPanel;
    const int64_t ncols = p.N - n0 < kPanel ? p.N - n0 : kPanel;
    if (flipped) {
      for (int i = 0; i < rows; ++i)
        for (int64_t j = 0; j < ncols; ++j)
          c[i * 16 + j] = static_cast<int32_t>(static_cast<uint32_t>(c[i * 16 + j]) -
                                               128u * static_cast<uint32_t>(p.col_sums[n0 + j]));
    }
    epilogue_rows(p, c, 16, rows, m, n0, ncols);
  }
}

TQ_TARGET_AVX2 inline __m256 quantize8(__m256 x, __m256 inv, __m256 zp, __m256 lo, __m256 hi) {
  __m256 t = _mm256_add_ps(
      _mm256_round_ps(_mm256_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zp);
  const __m256 nan = _mm256_cmp_ps(t, t, _CMP_UNORD_Q);
  return _mm256_blendv_ps(_mm256_min_ps(_mm256_max_ps(t, lo), hi), zp, nan);
}

}  // namespace

int gemm_mr__avx2() { return kMR; }

// The weight slice of a task (16 panels x K) is read once per activation tile, which is
// widened once per task: wide tasks keep that widening rare.
int64_t gemm_task_panels__avx2() { return 16; }

TQ_TARGET_AVX2 void gemm_compute__avx2(const GemmProblem& p, const void* a, int64_t lda,
                                       int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const int64_t K = p.K, groups = K / 4, r = K % 4, pstride = K * kPanel;
  const int64_t padded_groups = groups + (r != 0 ? 1 : 0);
  thread_local std::vector<int16_t> tile_buf;
  if (tile_buf.size() < static_cast<size_t>(padded_groups * kMR * 4)) {
    tile_buf.resize(static_cast<size_t>(padded_groups * kMR * 4));
  }
  int16_t* tile = tile_buf.data();
  alignas(32) int32_t c[kMR * 8];
  alignas(32) int8_t tw[kGroup];
  const auto* a8 = static_cast<const uint8_t*>(a);
  for (int64_t m = m0; m < m1; m += kMR) {
    const int rows = static_cast<int>(m1 - m < kMR ? m1 - m : kMR);
    if (p.a_unsigned && rows_are_7bit(a8 + m * lda, lda, rows, K)) {
      compute_tile_inplace(p, a8 + m * lda, lda, rows, m, p0, p1, pick_micro7(rows), false);
      continue;
    }
    pack_tile(a8 + m * lda, lda, p.a_unsigned, rows, K, tile);
    if (rows <= 2) {
      compute_tile16(p, tile, rows, m, p0, p1);
      continue;
    }
    const MicroFn fn = pick_micro(rows);
    for (int64_t pp = p0; pp < p1; ++pp) {
      const int8_t* b = p.w + pp * pstride;
      if (r != 0) spread_tail(b + groups * kGroup, r, tw);
      for (int64_t half = 0; half < 2; ++half) {
        const int64_t n0 = pp * kPanel + half * 8;
        if (n0 >= p.N) break;
        const int64_t ncols = p.N - n0 < 8 ? p.N - n0 : 8;
        fn(tile, b + half * 32, groups, c);
        if (r != 0) tail_group(rows, tile, groups, tw + half * 32, c);
        epilogue_rows(p, c, 8, rows, m, n0, ncols);
      }
    }
  }
}

TQ_TARGET_AVX2 void gemm_compute__avxvnni(const GemmProblem& p, const void* a, int64_t lda,
                                          int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const auto* a8 = static_cast<const uint8_t*>(a);
  for (int64_t m = m0; m < m1; m += kMRV) {
    const int rows = static_cast<int>(m1 - m < kMRV ? m1 - m : kMRV);
    compute_tile_inplace(p, a8 + m * lda, lda, rows, m, p0, p1,
                         p.a_unsigned ? pick_micro_vnni<false>(rows) : pick_micro_vnni<true>(rows),
                         !p.a_unsigned);
  }
}

TQ_TARGET_AVX2 void quantize_rows__avx2(const float* x, int64_t ldx, int64_t rows, int64_t K,
                                        int32_t qmin, int32_t qmax, int8_t* q, int64_t ldq,
                                        float* scale, int32_t* zp) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * ldx;
    // vminps(x, acc) returns acc when x is NaN, so NaN is ignored as in the scalar loop; acc
    // starts at +0 and never becomes -0, so the result matches the scalar one exactly.
    __m256 vmn = _mm256_setzero_ps(), vmx = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
      const __m256 v = _mm256_loadu_ps(xr + k);
      vmn = _mm256_min_ps(v, vmn);
      vmx = _mm256_max_ps(v, vmx);
    }
    alignas(32) float lmn[8], lmx[8];
    _mm256_store_ps(lmn, vmn);
    _mm256_store_ps(lmx, vmx);
    float mn = 0.0f, mx = 0.0f;
    for (int j = 0; j < 8; ++j) {
      mn = lmn[j] < mn ? lmn[j] : mn;
      mx = lmx[j] > mx ? lmx[j] : mx;
    }
    for (; k < K; ++k) {
      mn = xr[k] < mn ? xr[k] : mn;
      mx = xr[k] > mx ? xr[k] : mx;
    }
    rowwise_qparams(mn, mx, qmin, qmax, &scale[i], &zp[i]);
    const float inv_s = 1.0f / scale[i];
    const __m256 inv = _mm256_set1_ps(inv_s), z = _mm256_set1_ps(static_cast<float>(zp[i])),
                 lo = _mm256_set1_ps(static_cast<float>(qmin)),
                 hi = _mm256_set1_ps(static_cast<float>(qmax));
    int8_t* qr = q + i * ldq;
    k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m256i ab = _mm256_packs_epi32(
          _mm256_cvtps_epi32(quantize8(_mm256_loadu_ps(xr + k), inv, z, lo, hi)),
          _mm256_cvtps_epi32(quantize8(_mm256_loadu_ps(xr + k + 8), inv, z, lo, hi)));
      const __m256i cd = _mm256_packs_epi32(
          _mm256_cvtps_epi32(quantize8(_mm256_loadu_ps(xr + k + 16), inv, z, lo, hi)),
          _mm256_cvtps_epi32(quantize8(_mm256_loadu_ps(xr + k + 24), inv, z, lo, hi)));
      const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd),
                                                        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qr + k), bytes);
    }
    const float fzp = static_cast<float>(zp[i]), fl = static_cast<float>(qmin),
                fh = static_cast<float>(qmax);
    for (; k < K; ++k) {
      qr[k] = static_cast<int8_t>(static_cast<int32_t>(quantize_val(xr[k], inv_s, fzp, fl, fh)));
    }
  }
}

TQ_TARGET_AVX2 void gemm_pack_weight_kn__avx2(const int8_t* b, int64_t ldb, int64_t N, int64_t K,
                                              int64_t p0, int64_t p1, int8_t* packed,
                                              int32_t* col_sums) {
  const int64_t groups = K / 4, r = K % 4, full_panels = N / kPanel;
  // Rows of b are often a page or more apart: walking 64 groups (256 rows) of 8 adjacent panels
  // (two 64-byte lines per row) at a time keeps both the lines and their pages cached.
  constexpr int64_t kPanelBlock = 8, kGroupBlock = 64, kAhead = 16;
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t pend = p1 < full_panels ? p1 : full_panels;
  for (int64_t pb = p0; pb < pend; pb += kPanelBlock) {
    const int64_t pbe = pb + kPanelBlock < pend ? pb + kPanelBlock : pend;
    alignas(32) int32_t sums[kPanelBlock * 16] = {};
    const int64_t span = (pbe - pb) * kPanel;  // bytes of one row of b in this block
    for (int64_t g0 = 0; g0 < groups; g0 += kGroupBlock) {
      const int64_t g1 = g0 + kGroupBlock < groups ? g0 + kGroupBlock : groups;
      for (int64_t pp = pb; pp < pbe; ++pp) {
        int8_t* panel = packed + pp * K * kPanel;
        const int8_t* col = b + pp * kPanel;
        __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                          _mm256_setzero_si256()};
        for (int64_t g = g0; g < g1; ++g) {
          const int8_t* row = col + 4 * g * ldb;
          // Each row is a new page, where the hardware prefetchers stop: without software
          // prefetch every line is a demand miss and packing ran at a quarter of copy speed.
          // The first panel of the block fetches the lines that the other three reuse.
          if (pp == pb && g + kAhead < groups) {
            const int8_t* f = row + 4 * kAhead * ldb;
            for (int j = 0; j < 4; ++j) {
              _mm_prefetch(reinterpret_cast<const char*>(f + j * ldb), _MM_HINT_T0);
              _mm_prefetch(reinterpret_cast<const char*>(f + j * ldb + span - 1), _MM_HINT_T0);
            }
          }
          const __m128i r0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
          const __m128i r1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + ldb));
          const __m128i r2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * ldb));
          const __m128i r3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 3 * ldb));
          // Byte then 16-bit interleaves turn 4 rows x 16 channels into 16 channels x 4 rows.
          const __m128i t0 = _mm_unpacklo_epi8(r0, r1), t1 = _mm_unpackhi_epi8(r0, r1);
          const __m128i t2 = _mm_unpacklo_epi8(r2, r3), t3 = _mm_unpackhi_epi8(r2, r3);
          const __m128i o[4] = {_mm_unpacklo_epi16(t0, t2), _mm_unpackhi_epi16(t0, t2),
                                _mm_unpacklo_epi16(t1, t3), _mm_unpackhi_epi16(t1, t3)};
          for (int j = 0; j < 4; ++j) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(panel + g * kGroup + 16 * j), o[j]);
            // Two int32 lanes per channel (rows 0+1, rows 2+3), each |sum| <= 256 per group.
            acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(_mm256_cvtepi8_epi16(o[j]), ones));
          }
        }
        int32_t* s = sums + (pp - pb) * 16;
        const __m256i lo = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[0], acc[1]), 0xD8);
        const __m256i hi = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[2], acc[3]), 0xD8);
        _mm256_store_si256(reinterpret_cast<__m256i*>(s),
                           _mm256_add_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(s)), lo));
        _mm256_store_si256(reinterpret_cast<__m256i*>(s + 8),
                           _mm256_add_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(s + 8)), hi));
      }
    }
    for (int64_t pp = pb; pp < pbe; ++pp) {
      int8_t* panel = packed + pp * K * kPanel;
      int32_t* s = sums + (pp - pb) * 16;
      for (int64_t ch = 0; ch < kPanel; ++ch) {
        for (int64_t j = 0; j < r; ++j) {
          const int8_t v = b[(4 * groups + j) * ldb + pp * kPanel + ch];
          panel[groups * kGroup + ch * r + j] = v;
          s[ch] += v;
        }
        col_sums[pp * kPanel + ch] = s[ch];
      }
    }
  }
  if (p1 > full_panels && N % kPanel != 0) {  // the partial last panel
    gemm_pack_weight_cols(b, 1, ldb, N, K, full_panels * kPanel, N, packed, col_sums);
  }
}

// The weight layout from w [N, K] read in place (row n at w + n * ldw, unit stride along K), for
// panels [p0, p1): each half panel of 8 rows is loaded 32 bytes (8 groups of 4 k) at a time and
// an 8 x 8 transpose of int32 lanes gives 8 half groups. Rows past N pack as zeros; a last chunk
// of fewer than 8 groups loads under an int32 lane mask.
TQ_TARGET_AVX2 void gemm_pack_weight_nk__avx2(const int8_t* w, int64_t ldw, int64_t N, int64_t K,
                                              int64_t p0, int64_t p1, int8_t* packed,
                                              int32_t* col_sums) {
  const int64_t groups = K / 4, r = K % 4;
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), zero = _mm256_setzero_si256();
  for (int64_t pp = p0; pp < p1; ++pp) {
    const int64_t c0 = pp * kPanel;
    const int64_t rows = N - c0 < kPanel ? N - c0 : kPanel;
    int8_t* panel = packed + pp * K * kPanel;
    alignas(32) int32_t s[kPanel];
    for (int64_t h = 0; h < 2; ++h) {
      const int64_t hr = rows - 8 * h;  // rows of this half inside N (may be <= 0)
      const int8_t* src = w + (c0 + 8 * h) * ldw;
      __m256i sum = zero;
      for (int64_t g0 = 0; g0 < groups; g0 += 8) {
        const int64_t ng = groups - g0 < 8 ? groups - g0 : 8;
        const int8_t* sg = src + 4 * g0;
        const __m256i km = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(ng)), lane);
        // Row c of the half, or zeros past N; a full chunk takes plain loads.
#define TQ_LD(c)                                                                                   \
  const __m256i v##c =                                                                             \
      c >= hr ? zero                                                                               \
      : ng == 8 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sg + c * ldw))               \
                : _mm256_maskload_epi32(reinterpret_cast<const int*>(sg + c * ldw), km);
        TQ_LD(0) TQ_LD(1) TQ_LD(2) TQ_LD(3) TQ_LD(4) TQ_LD(5) TQ_LD(6) TQ_LD(7)
#undef TQ_LD
        // Per 128-bit half L: t/u interleaves leave u(4q + j) = group 4L + j of rows 4q .. 4q + 3.
        const __m256i t0 = _mm256_unpacklo_epi32(v0, v1), t1 = _mm256_unpackhi_epi32(v0, v1);
        const __m256i t2 = _mm256_unpacklo_epi32(v2, v3), t3 = _mm256_unpackhi_epi32(v2, v3);
        const __m256i t4 = _mm256_unpacklo_epi32(v4, v5), t5 = _mm256_unpackhi_epi32(v4, v5);
        const __m256i t6 = _mm256_unpacklo_epi32(v6, v7), t7 = _mm256_unpackhi_epi32(v6, v7);
        const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
        const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
        const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
        const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
        int8_t* d = panel + g0 * kGroup + 32 * h;
#define TQ_ST(g, X, Y, IMM)                                                                  \
  if (g < ng) {                                                                              \
    const __m256i o = _mm256_permute2x128_si256(X, Y, IMM);                                  \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + g * kGroup), o);                      \
    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, o), ones16)); \
  }
        TQ_ST(0, u0, u4, 0x20) TQ_ST(1, u1, u5, 0x20) TQ_ST(2, u2, u6, 0x20) TQ_ST(3, u3, u7, 0x20)
        TQ_ST(4, u0, u4, 0x31) TQ_ST(5, u1, u5, 0x31) TQ_ST(6, u2, u6, 0x31) TQ_ST(7, u3, u7, 0x31)
#undef TQ_ST
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(s + 8 * h), sum);
    }
    const int8_t* src = w + c0 * ldw;
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

void gemm_compute__avxvnni(const GemmProblem& p, const void* a, int64_t lda, int64_t m0, int64_t m1,
                           int64_t p0, int64_t p1) {
  gemm_compute__scalar(p, a, lda, m0, m1, p0, p1);
}
int gemm_mr__avx2() { return gemm_mr__scalar(); }
int64_t gemm_task_panels__avx2() { return gemm_task_panels__scalar(); }
void gemm_compute__avx2(const GemmProblem& p, const void* a, int64_t lda, int64_t m0, int64_t m1,
                        int64_t p0, int64_t p1) {
  gemm_compute__scalar(p, a, lda, m0, m1, p0, p1);
}
void quantize_rows__avx2(const float* x, int64_t ldx, int64_t rows, int64_t K, int32_t qmin,
                         int32_t qmax, int8_t* q, int64_t ldq, float* scale, int32_t* zp) {
  quantize_rows__scalar(x, ldx, rows, K, qmin, qmax, q, ldq, scale, zp);
}
void gemm_pack_weight_kn__avx2(const int8_t* b, int64_t ldb, int64_t N, int64_t K, int64_t p0,
                               int64_t p1, int8_t* packed, int32_t* col_sums) {
  const int64_t n1 = p1 * kPanel < N ? p1 * kPanel : N;
  gemm_pack_weight_cols(b, 1, ldb, N, K, p0 * kPanel, n1, packed, col_sums);
}
void gemm_pack_weight_nk__avx2(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int64_t p0,
                               int64_t p1, int8_t* packed, int32_t* col_sums) {
  const int64_t n1 = p1 * kPanel < N ? p1 * kPanel : N;
  gemm_pack_weight_cols(w, ldw, 1, N, K, p0 * kPanel, n1, packed, col_sums);
}
#endif

}  // namespace cpu
}  // namespace torchquant
