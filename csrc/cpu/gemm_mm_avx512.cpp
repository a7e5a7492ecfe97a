// int8_mm without packing (AVX-512 VNNI): b is read where it lies, row-major [K, N] with unit
// stride along N, and each group of 4 rows of b is turned into vpdpbusd's operand order (byte
// then 16-bit interleaves), in registers for a few rows of a or into a small buffer shared by
// many (see below). Packing the whole of b for torch._int_mm's signature cost a write and a
// re-read of all of b per call: at M = 1 that was three times the product itself.
//
// vpdpbusd wants one operand unsigned. Here that is b, flipped to b + 128 (xor 0x80) right after
// the interleave, so a is broadcast as it is; the flip adds 128 * sum_k a[m, k] to every output
// of row m, which the store subtracts. Products are at most 255 * 128 in magnitude and the int32
// lanes wrap modulo 2^32, so the corrected value, exact by K <= kMaxK, comes out right.
//
// In-lane interleaves leave interleaved vector j holding, in 128-bit block L, the 4 columns
// 16L + 4j .. 16L + 4j + 3; a 4 x 4 transpose of 128-bit blocks puts a 64-column block in column
// order (on the accumulators when b is interleaved in registers, on b when it goes through the
// buffer). Blocks of at most 16 columns (N <= 16, or the last columns) take one 16-lane vector
// per group of 4 rows instead of four mostly empty ones.
//
// K is walked in chunks, with the running sums kept in the int32 output between chunks. With a
// few rows (M <= 4) a chunk is 256 rows and b is interleaved in registers, block by block: the
// rows of a chunk stay in the TLB while each block reads its 64 bytes from them. With more rows
// a chunk (up to 2048 rows) of a run of several blocks is interleaved into an L2-sized buffer
// once, reading each row of b's run at once (one page visit for several lines), and every row
// tile of the task passes over it: at M = 256, K = N = 4096 that costs about a tenth of the
// product, where packing b into the weight layout cost a sixth.
//
// b = w.t() of a row-major w [N, K] (unit stride along K) is read as w's rows: the buffered
// path's buffer is then filled by 16 x 16 int32 transposes of 16 rows of w (interleave_wide_nk),
// and for up to 4 rows of a the product is dot products of rows (gemm_mm_nk__avx512vnni).
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu/gemm_kernels.h"
#include "cpu/gemm_transpose_avx512.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

constexpr int kMR = 4;     // rows per tile when b is interleaved in registers
constexpr int kMRBuf = 6;  // rows per tile from an interleaved buffer
constexpr int kMR16 = 12;  // rows per tile of a block of <= 16 columns
constexpr int64_t kChunk = 256;  // rows of b (a multiple of 4); its interleave is 16 KiB
// With more than kMR rows: rows of b per chunk (a multiple of 4), and the size of the buffer
// that holds a chunk of several 64-column blocks. A longer chunk saves passes of the running sums
// through the output; more blocks per chunk read more of each row of b per visit of its page.
constexpr int64_t kChunkWide = 2048;
constexpr int64_t kBufBytes = int64_t{512} << 10;

TQ_TARGET_AVX512VNNI inline __m512i load_row(const int8_t* p, __mmask64 k) {
  return _mm512_maskz_loadu_epi8(k, p);
}

// Rows bk[0..rows) (rows <= 4, missing rows zero) of 64 columns (mask kb), interleaved four
// bytes per column for vpdpbusd and flipped to unsigned (x ^ 0x80): o[0..3] in unpack order.
TQ_TARGET_AVX512VNNI inline void interleave4(const int8_t* bk, int64_t ldb, int64_t rows,
                                             __mmask64 kb, __m512i o[4]) {
  const __m512i z = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i r0 = load_row(bk, kb);
  const __m512i r1 = rows > 1 ? load_row(bk + ldb, kb) : z;
  const __m512i r2 = rows > 2 ? load_row(bk + 2 * ldb, kb) : z;
  const __m512i r3 = rows > 3 ? load_row(bk + 3 * ldb, kb) : z;
  const __m512i t0 = _mm512_unpacklo_epi8(r0, r1), t1 = _mm512_unpackhi_epi8(r0, r1);
  const __m512i t2 = _mm512_unpacklo_epi8(r2, r3), t3 = _mm512_unpackhi_epi8(r2, r3);
  o[0] = _mm512_xor_si512(_mm512_unpacklo_epi16(t0, t2), flip);
  o[1] = _mm512_xor_si512(_mm512_unpackhi_epi16(t0, t2), flip);
  o[2] = _mm512_xor_si512(_mm512_unpacklo_epi16(t1, t3), flip);
  o[3] = _mm512_xor_si512(_mm512_unpackhi_epi16(t1, t3), flip);
}

// The 4 x 4 transpose of 128-bit blocks; its own inverse. A macro on named variables: an
// inline function taking them by reference made GCC keep every accumulator in memory.
#define TQ_MM_TRANSPOSE(x0, x1, x2, x3)                                                   \
  do {                                                                                    \
    const __m512i u0 = _mm512_shuffle_i32x4(x0, x1, 0x44);                                \
    const __m512i u1 = _mm512_shuffle_i32x4(x2, x3, 0x44);                                \
    const __m512i u2 = _mm512_shuffle_i32x4(x0, x1, 0xEE);                                \
    const __m512i u3 = _mm512_shuffle_i32x4(x2, x3, 0xEE);                                \
    x0 = _mm512_shuffle_i32x4(u0, u1, 0x88);                                              \
    x1 = _mm512_shuffle_i32x4(u0, u1, 0xDD);                                              \
    x2 = _mm512_shuffle_i32x4(u2, u3, 0x88);                                              \
    x3 = _mm512_shuffle_i32x4(u2, u3, 0xDD);                                              \
  } while (0)

// 16-column lane masks of a block of nc <= 64 columns.
TQ_TARGET_AVX512VNNI inline __mmask16 lane_mask(int64_t nc, int j) {
  const int64_t left = nc - 16 * j;
  return left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1u);
}

#define TQ_MM_ROW(i)                                                                    \
  if constexpr (R > i) {                                                                \
    int32_t v;                                                                          \
    std::memcpy(&v, a + i * lda + k, 4);                                                \
    const __m512i x = _mm512_set1_epi32(v);                                             \
    acc##i##0 = _mm512_dpbusd_epi32(acc##i##0, o0, x);                                  \
    acc##i##1 = _mm512_dpbusd_epi32(acc##i##1, o1, x);                                  \
    acc##i##2 = _mm512_dpbusd_epi32(acc##i##2, o2, x);                                  \
    acc##i##3 = _mm512_dpbusd_epi32(acc##i##3, o3, x);                                  \
  }
#define TQ_MM_STORE(i)                                                                  \
  if constexpr (R > i) {                                                                \
    _mm512_store_si512(c + i * 64, acc##i##0);                                          \
    _mm512_store_si512(c + i * 64 + 16, acc##i##1);                                     \
    _mm512_store_si512(c + i * 64 + 32, acc##i##2);                                     \
    _mm512_store_si512(c + i * 64 + 48, acc##i##3);                                     \
  }

// Rows k0 .. k0 + 4 * groups + r of b (r < 4 only in the last chunk) times R rows of a (row i at
// a + i * lda, indexed by k), for one block of nc <= 64 columns of b starting at b (row k at
// b + k * ldb): raw accumulators, in interleave order, into c[i * 64 ..]. The accumulators are
// named variables stored once at the end: with loads and fix-ups of the output mixed in, GCC
// kept them in memory.
template <int R>
TQ_TARGET_AVX512VNNI void block(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb,
                                int64_t k0, int64_t groups, int64_t nc, int32_t* c) {
  const __m512i z = _mm512_setzero_si512();
  const __mmask64 kb = nc >= 64 ? ~__mmask64(0) : (__mmask64(1) << nc) - 1;
  __m512i acc00 = z, acc01 = z, acc02 = z, acc03 = z, acc10 = z, acc11 = z, acc12 = z, acc13 = z,
          acc20 = z, acc21 = z, acc22 = z, acc23 = z, acc30 = z, acc31 = z, acc32 = z, acc33 = z;
  int64_t k = k0;
  for (int64_t g = 0; g < groups; ++g, k += 4) {
    __m512i o[4];
    interleave4(b + k * ldb, ldb, 4, kb, o);
    const __m512i o0 = o[0], o1 = o[1], o2 = o[2], o3 = o[3];
    TQ_MM_ROW(0)
    TQ_MM_ROW(1)
    TQ_MM_ROW(2)
    TQ_MM_ROW(3)
  }
  TQ_MM_STORE(0)
  TQ_MM_STORE(1)
  TQ_MM_STORE(2)
  TQ_MM_STORE(3)
}


// The same product from b's block already interleaved and flipped into buf (64 bytes per
// column quarter, 256 per group of 4 rows; the last group zero-padded past K, which the flip
// made 128, facing zero-padded bytes of a), for up to 6 rows of a: once a block is shared by
// several row tiles, its interleave is done once instead of per tile.
//
// kDirect: the whole K in one chunk with no K % 4 tail (the usual case up to K = 2048) and a
// full block of 64 columns; the accumulators start at -corr[i] (sums wrap modulo 2^32 alike)
// and, already in column order, go straight to the output rows (dst + i * ld), without the
// round trip through c and finish() (at K = 256 that round trip was a few percent of the
// tile). Otherwise they start at 0 and go to c (ld = 64). Plain stores either way: masked
// stores of a fix-up there made GCC keep every accumulator in memory inside the loop.
#define TQ_MM_INIT(i)                                                                   \
  if constexpr (R > i && kDirect) {                                                     \
    const __m512i s = _mm512_set1_epi32(                                                \
        static_cast<int32_t>(0u - static_cast<uint32_t>(corr[i])));                     \
    acc##i##0 = s;                                                                      \
    acc##i##1 = s;                                                                      \
    acc##i##2 = s;                                                                      \
    acc##i##3 = s;                                                                      \
  }
#define TQ_MM_STORE_TO(i)                                                               \
  if constexpr (R > i) {                                                                \
    _mm512_storeu_si512(dst + i * ld, acc##i##0);                                       \
    _mm512_storeu_si512(dst + i * ld + 16, acc##i##1);                                  \
    _mm512_storeu_si512(dst + i * ld + 32, acc##i##2);                                  \
    _mm512_storeu_si512(dst + i * ld + 48, acc##i##3);                                  \
  }
template <int R, bool kDirect>
TQ_TARGET_AVX512VNNI void block_buf(const int8_t* a, int64_t lda, const int8_t* buf, int64_t k0,
                                    int64_t groups, const int32_t* corr, int32_t* dst,
                                    int64_t ld) {
  const __m512i z = _mm512_setzero_si512();
  __m512i acc00 = z, acc01 = z, acc02 = z, acc03 = z, acc10 = z, acc11 = z, acc12 = z, acc13 = z,
          acc20 = z, acc21 = z, acc22 = z, acc23 = z, acc30 = z, acc31 = z, acc32 = z, acc33 = z,
          acc40 = z, acc41 = z, acc42 = z, acc43 = z, acc50 = z, acc51 = z, acc52 = z, acc53 = z;
  TQ_MM_INIT(0)
  TQ_MM_INIT(1)
  TQ_MM_INIT(2)
  TQ_MM_INIT(3)
  TQ_MM_INIT(4)
  TQ_MM_INIT(5)
  int64_t k = k0;
  for (int64_t g = 0; g < groups; ++g, k += 4) {
    const int8_t* bg = buf + g * 256;
    const __m512i o0 = _mm512_load_si512(bg), o1 = _mm512_load_si512(bg + 64),
                  o2 = _mm512_load_si512(bg + 128), o3 = _mm512_load_si512(bg + 192);
    TQ_MM_ROW(0)
    TQ_MM_ROW(1)
    TQ_MM_ROW(2)
    TQ_MM_ROW(3)
    TQ_MM_ROW(4)
    TQ_MM_ROW(5)
  }
  TQ_MM_STORE_TO(0)
  TQ_MM_STORE_TO(1)
  TQ_MM_STORE_TO(2)
  TQ_MM_STORE_TO(3)
  TQ_MM_STORE_TO(4)
  TQ_MM_STORE_TO(5)
}
#undef TQ_MM_INIT
#undef TQ_MM_STORE_TO

// Interleaves and flips rows k0 .. k0 + 4 * groups + r of one block of nc columns into buf.
TQ_TARGET_AVX512VNNI void interleave(const int8_t* b, int64_t ldb, int64_t k0, int64_t groups,
                                     int64_t r, int64_t nc, int8_t* buf) {
  const __mmask64 kb = nc >= 64 ? ~__mmask64(0) : (__mmask64(1) << nc) - 1;
  const int64_t total = groups + (r != 0 ? 1 : 0);
  for (int64_t g = 0; g < total; ++g) {
    __m512i o[4];
    interleave4(b + (k0 + 4 * g) * ldb, ldb, g < groups ? 4 : r, kb, o);
    int8_t* bg = buf + g * 256;
    _mm512_store_si512(bg, o[0]);
    _mm512_store_si512(bg + 64, o[1]);
    _mm512_store_si512(bg + 128, o[2]);
    _mm512_store_si512(bg + 192, o[3]);
  }
}

// Adds the last, partial group of 4 rows (r = K % 4 rows of b, interleaved and flipped into tb,
// zero rows made 128 facing zero bytes of a) at row k of a to the raw accumulators c.
TQ_TARGET_AVX512VNNI void tail_group(int rows, const int8_t* a, int64_t lda, int64_t k, int64_t r,
                                     const int8_t* tb, int32_t* c) {
  const __m512i o0 = _mm512_load_si512(tb), o1 = _mm512_load_si512(tb + 64),
                o2 = _mm512_load_si512(tb + 128), o3 = _mm512_load_si512(tb + 192);
  for (int i = 0; i < rows; ++i) {
    uint32_t v = 0;
    std::memcpy(&v, a + i * lda + k, static_cast<size_t>(r));
    const __m512i x = _mm512_set1_epi32(static_cast<int32_t>(v));
    int32_t* ci = c + i * 64;
    _mm512_store_si512(ci, _mm512_dpbusd_epi32(_mm512_load_si512(ci), o0, x));
    _mm512_store_si512(ci + 16, _mm512_dpbusd_epi32(_mm512_load_si512(ci + 16), o1, x));
    _mm512_store_si512(ci + 32, _mm512_dpbusd_epi32(_mm512_load_si512(ci + 32), o2, x));
    _mm512_store_si512(ci + 48, _mm512_dpbusd_epi32(_mm512_load_si512(ci + 48), o3, x));
  }
}

// Puts `rows` rows of raw accumulators c (interleave order) into the output block (row i at
// out + i * ldo, nc <= 64 columns): added to the running sums there unless `first`, less
// corr[i] when `last`.
template <bool Ordered>
TQ_TARGET_AVX512VNNI void finish(int rows, const int32_t* c, int64_t nc, bool first, bool last,
                                 const int32_t* corr, int32_t* out, int64_t ldo) {
  const __mmask16 m0 = lane_mask(nc, 0), m1 = lane_mask(nc, 1), m2 = lane_mask(nc, 2),
                  m3 = lane_mask(nc, 3);
  for (int i = 0; i < rows; ++i) {
    __m512i x0 = _mm512_load_si512(c + i * 64), x1 = _mm512_load_si512(c + i * 64 + 16),
            x2 = _mm512_load_si512(c + i * 64 + 32), x3 = _mm512_load_si512(c + i * 64 + 48);
    if constexpr (!Ordered) TQ_MM_TRANSPOSE(x0, x1, x2, x3);
    int32_t* o = out + i * ldo;
    if (!first) {
      x0 = _mm512_add_epi32(x0, _mm512_maskz_loadu_epi32(m0, o));
      x1 = _mm512_add_epi32(x1, _mm512_maskz_loadu_epi32(m1, o + 16));
      x2 = _mm512_add_epi32(x2, _mm512_maskz_loadu_epi32(m2, o + 32));
      x3 = _mm512_add_epi32(x3, _mm512_maskz_loadu_epi32(m3, o + 48));
    }
    if (last) {
      const __m512i s = _mm512_set1_epi32(corr[i]);
      x0 = _mm512_sub_epi32(x0, s);
      x1 = _mm512_sub_epi32(x1, s);
      x2 = _mm512_sub_epi32(x2, s);
      x3 = _mm512_sub_epi32(x3, s);
    }
    _mm512_mask_storeu_epi32(o, m0, x0);
    _mm512_mask_storeu_epi32(o + 16, m1, x1);
    _mm512_mask_storeu_epi32(o + 32, m2, x2);
    _mm512_mask_storeu_epi32(o + 48, m3, x3);
  }
}


// Blocks of at most 16 columns (N <= 16, or the last columns past a multiple of 64): one 16-lane
// vector per group of 4 rows of b, in column order, so nothing is spent on the 48 padding
// columns of a 64-column block and the accumulators need no transpose.
#define TQ_MM_ROW16(i)                                                                  \
  if constexpr (R > i) {                                                                \
    int32_t v;                                                                          \
    std::memcpy(&v, a + i * lda + k, 4);                                                \
    acc##i = _mm512_dpbusd_epi32(acc##i, o, _mm512_set1_epi32(v));                      \
  }
#define TQ_MM_STORE16(i) \
  if constexpr (R > i) _mm512_store_si512(c + i * 16, acc##i);

// Rows k0 .. k0 + 4 * groups of one block of <= 16 columns interleaved and flipped into buf
// (64 bytes per group) times R <= 12 rows of a: raw accumulators, in column order, into
// c[i * 16 ..].
template <int R>
TQ_TARGET_AVX512VNNI void block16_buf(const int8_t* a, int64_t lda, const int8_t* buf, int64_t k0,
                                      int64_t groups, int32_t* c) {
  const __m512i z = _mm512_setzero_si512();
  __m512i acc0 = z, acc1 = z, acc2 = z, acc3 = z, acc4 = z, acc5 = z, acc6 = z, acc7 = z,
          acc8 = z, acc9 = z, acc10 = z, acc11 = z;
  int64_t k = k0;
  for (int64_t g = 0; g < groups; ++g, k += 4) {
    const __m512i o = _mm512_load_si512(buf + g * 64);
    TQ_MM_ROW16(0)
    TQ_MM_ROW16(1)
    TQ_MM_ROW16(2)
    TQ_MM_ROW16(3)
    TQ_MM_ROW16(4)
    TQ_MM_ROW16(5)
    TQ_MM_ROW16(6)
    TQ_MM_ROW16(7)
    TQ_MM_ROW16(8)
    TQ_MM_ROW16(9)
    TQ_MM_ROW16(10)
    TQ_MM_ROW16(11)
  }
  TQ_MM_STORE16(0)
  TQ_MM_STORE16(1)
  TQ_MM_STORE16(2)
  TQ_MM_STORE16(3)
  TQ_MM_STORE16(4)
  TQ_MM_STORE16(5)
  TQ_MM_STORE16(6)
  TQ_MM_STORE16(7)
  TQ_MM_STORE16(8)
  TQ_MM_STORE16(9)
  TQ_MM_STORE16(10)
  TQ_MM_STORE16(11)
}

// tail_group() and finish() for a block of nc <= 16 columns (c in column order, 16 per row).
TQ_TARGET_AVX512VNNI void tail_group16(int rows, const int8_t* a, int64_t lda, int64_t k,
                                       int64_t r, const int8_t* tb, int32_t* c) {
  const __m512i o = _mm512_load_si512(tb);
  for (int i = 0; i < rows; ++i) {
    uint32_t v = 0;
    std::memcpy(&v, a + i * lda + k, static_cast<size_t>(r));
    const __m512i x = _mm512_set1_epi32(static_cast<int32_t>(v));
    _mm512_store_si512(c + i * 16, _mm512_dpbusd_epi32(_mm512_load_si512(c + i * 16), o, x));
  }
}

TQ_TARGET_AVX512VNNI void finish16(int rows, const int32_t* c, int64_t nc, bool first, bool last,
                                   const int32_t* corr, int32_t* out, int64_t ldo) {
  const __mmask16 m = lane_mask(nc, 0);
  for (int i = 0; i < rows; ++i) {
    __m512i x = _mm512_load_si512(c + i * 16);
    int32_t* o = out + i * ldo;
    if (!first) x = _mm512_add_epi32(x, _mm512_maskz_loadu_epi32(m, o));
    if (last) x = _mm512_sub_epi32(x, _mm512_set1_epi32(corr[i]));
    _mm512_mask_storeu_epi32(o, m, x);
  }
}

#undef TQ_MM_ROW16
#undef TQ_MM_STORE16

#undef TQ_MM_ROW
#undef TQ_MM_LOAD
#undef TQ_MM_STORE

using BlockFn = decltype(&block<1>);
using BlockBufFn = decltype(&block_buf<1, false>);
using Block16Fn = decltype(&block16_buf<1>);

template <int... Rs>
Block16Fn pick_block16_impl(int rows, std::integer_sequence<int, Rs...>) {
  Block16Fn f = &block16_buf<12>;
  ((rows == Rs + 1 ? (f = &block16_buf<Rs + 1>, 0) : 0), ...);
  return f;
}

Block16Fn pick_block16(int rows) {
  return pick_block16_impl(rows, std::make_integer_sequence<int, kMR16>{});
}

template <bool kDirect>
BlockBufFn pick_block_buf(int rows) {
  switch (rows) {
    case 1: return &block_buf<1, kDirect>;
    case 2: return &block_buf<2, kDirect>;
    case 3: return &block_buf<3, kDirect>;
    case 4: return &block_buf<4, kDirect>;
    case 5: return &block_buf<5, kDirect>;
    default: return &block_buf<6, kDirect>;
  }
}

BlockFn pick_block(int rows) {
  switch (rows) {
    case 1: return &block<1>;
    case 2: return &block<2>;
    case 3: return &block<3>;
    default: return &block<4>;
  }
}


// Interleaves and flips rows k0 .. k0 + 4 * groups + r of columns [s0, s1) of b, block by
// block of 64 columns (the last one, when it has <= 16 columns, in interleave16's layout),
// block j at buf + j * bstride. Each row's whole segment is read at once: rows of b are
// usually a page or more apart, and a page visit (a TLB miss) costs several times the 64 bytes
// that one block would take from it.
TQ_TARGET_AVX512VNNI void interleave_wide(const int8_t* b, int64_t ldb, int64_t k0, int64_t groups,
                                          int64_t r, int64_t s0, int64_t s1, int8_t* buf,
                                          int64_t bstride) {
  const int64_t nblk = (s1 - s0 + 63) / 64, last_nc = s1 - s0 - 64 * (nblk - 1);
  const bool narrow_last = last_nc <= 16;
  const int64_t wide = narrow_last ? nblk - 1 : nblk;
  const __mmask64 kl = last_nc >= 64 ? ~__mmask64(0) : (__mmask64(1) << last_nc) - 1;
  const int64_t total = groups + (r != 0 ? 1 : 0);
  for (int64_t g = 0; g < total; ++g) {
    const int8_t* bk = b + (k0 + 4 * g) * ldb + s0;
    const int64_t rows = g < groups ? 4 : r;
    for (int64_t j = 0; j < wide; ++j) {
      const __mmask64 kb = j == nblk - 1 ? kl : ~__mmask64(0);
      __m512i o[4];
      interleave4(bk + 64 * j, ldb, rows, kb, o);
      __m512i o0 = o[0], o1 = o[1], o2 = o[2], o3 = o[3];
      // Put into column order here, once per group of b, rather than in finish() once per
      // row of the output.
      TQ_MM_TRANSPOSE(o0, o1, o2, o3);
      int8_t* bg = buf + j * bstride + g * 256;
      _mm512_store_si512(bg, o0);
      _mm512_store_si512(bg + 64, o1);
      _mm512_store_si512(bg + 128, o2);
      _mm512_store_si512(bg + 192, o3);
    }
    if (narrow_last) {
      const __mmask16 kb = static_cast<__mmask16>(last_nc >= 16 ? 0xFFFFu : (1u << last_nc) - 1u);
      const __m128i zx = _mm_setzero_si128();
      const __m128i fx = _mm_set1_epi8(static_cast<char>(0x80));
      const int8_t* bj = bk + 64 * wide;
      const __m128i r0 = _mm_maskz_loadu_epi8(kb, bj);
      const __m128i r1 = rows > 1 ? _mm_maskz_loadu_epi8(kb, bj + ldb) : zx;
      const __m128i r2 = rows > 2 ? _mm_maskz_loadu_epi8(kb, bj + 2 * ldb) : zx;
      const __m128i r3 = rows > 3 ? _mm_maskz_loadu_epi8(kb, bj + 3 * ldb) : zx;
      const __m128i t0 = _mm_unpacklo_epi8(r0, r1), t1 = _mm_unpackhi_epi8(r0, r1);
      const __m128i t2 = _mm_unpacklo_epi8(r2, r3), t3 = _mm_unpackhi_epi8(r2, r3);
      auto* bg = reinterpret_cast<__m128i*>(buf + wide * bstride + g * 64);
      _mm_store_si128(bg, _mm_xor_si128(_mm_unpacklo_epi16(t0, t2), fx));
      _mm_store_si128(bg + 1, _mm_xor_si128(_mm_unpackhi_epi16(t0, t2), fx));
      _mm_store_si128(bg + 2, _mm_xor_si128(_mm_unpacklo_epi16(t1, t3), fx));
      _mm_store_si128(bg + 3, _mm_xor_si128(_mm_unpackhi_epi16(t1, t3), fx));
    }
  }
}

#undef TQ_MM_TRANSPOSE

// interleave_wide's buffer from w [N, K] with unit stride along K (row n at w + n * ldw: b =
// w.t()): for channels [s0, s1) and rows k0 .. k0 + 4 * groups + r of b, i.e. those bytes of
// each row of w. In column order, 16 columns of a group are one packed-panel vector, so each
// slice of 16 rows of w is loaded 64 bytes (16 groups) at a time, transposed in registers and
// flipped; bytes past K and rows past s1 load as zeros (flipped to 128, facing zeros of a or
// never stored).
TQ_TARGET_AVX512VNNI void interleave_wide_nk(const int8_t* w, int64_t ldw, int64_t k0,
                                             int64_t groups, int64_t r, int64_t s0, int64_t s1,
                                             int8_t* buf, int64_t bstride) {
  const int64_t nblk = (s1 - s0 + 63) / 64, last_nc = s1 - s0 - 64 * (nblk - 1);
  const bool narrow_last = last_nc <= 16;
  const int64_t wide = narrow_last ? nblk - 1 : nblk;
  const int64_t total = groups + (r != 0 ? 1 : 0), kend = k0 + 4 * groups + r;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t cb = s0; cb < s1; cb += 16) {
    const int64_t t = (cb - s0) / 16, j = t / 4, q = t % 4;
    const int64_t rows = s1 - cb < 16 ? s1 - cb : 16;
    // Group g of this slice: 256 bytes per group in a wide block, 64 in the narrow last one.
    int8_t* dst = j < wide ? buf + j * bstride + q * 64 : buf + wide * bstride;
    const int64_t gstride = j < wide ? 256 : 64;
    const int8_t* src = w + cb * ldw;
    for (int64_t g0 = 0; g0 < total; g0 += 16) {
      const int64_t kb = k0 + 4 * g0, nbytes = kend - kb < 64 ? kend - kb : 64;
      const __mmask64 km = nbytes >= 64 ? ~__mmask64{0} : (__mmask64{1} << nbytes) - 1;
      __m512i v[16];
#pragma GCC unroll 16
      for (int c = 0; c < 16; ++c)
        v[c] = _mm512_maskz_loadu_epi8(c < rows ? km : 0, src + (c < rows ? c : 0) * ldw + kb);
      transpose16_epi32(v);
      const int64_t ng = total - g0 < 16 ? total - g0 : 16;
      int8_t* d = dst + g0 * gstride;
#pragma GCC unroll 16
      for (int g = 0; g < 16; ++g)
        if (g < ng) _mm512_store_si512(d + g * gstride, _mm512_xor_si512(v[g], flip));
    }
  }
}



// The driver of both entries below. NK: b is given as w (row n at b + n * ldb, unit stride
// along K), always through the buffer.
template <bool NK>
TQ_TARGET_AVX512VNNI void mm_direct(const int8_t* a, int64_t lda, int64_t M, const int8_t* b,
                                    int64_t ldb, int64_t K, int64_t n0, int64_t n1, int32_t* out,
                                    int64_t ldo) {
  if (M <= 0 || n1 <= n0) return;
  const bool few = !NK && M <= kMR;
  // More than kMR rows: K in chunks of up to kChunkWide rows (their running sums go through the
  // output between chunks) and columns in runs of sb blocks of 64, the chunk of a run
  // interleaved into the buffer at once (about kBufBytes, L2-sized) and then used by every row
  // tile. Few rows: 64 columns at a time, interleaved in registers.
  const int64_t kc = few ? kChunk : (K <= kChunkWide ? K : kChunkWide);
  int64_t sb = 1;
  if (!few) {
    sb = kBufBytes / (64 * kc);
    sb = sb < 1 ? 1 : sb > 16 ? 16 : sb;
  }
  const int64_t bstride = (kc / 4 + 1) * 256;
  // Scratch reused across calls: 128 * sum_k a[m, k] per row (modulo 2^32 like the
  // accumulators) and the interleaved chunk (one extra group per block for the K % 4 tail, 64
  // bytes of slack to align it).
  thread_local std::vector<int32_t> corr_buf;
  thread_local std::vector<int8_t> buf_raw;
  int32_t* corr = scratch(corr_buf, static_cast<size_t>(M));
  int8_t* raw = scratch(buf_raw, static_cast<size_t>(sb * bstride + 64));
  int8_t* buf = raw + ((64 - reinterpret_cast<uintptr_t>(raw) % 64) % 64);
  alignas(64) int32_t c[kMR16 * 16 > kMRBuf * 64 ? kMR16 * 16 : kMRBuf * 64];
  for (int64_t i = 0; i < M; ++i) {
    const int8_t* row = a + i * lda;
    __m512i s = _mm512_setzero_si512();
    const __m512i ones = _mm512_set1_epi8(1);
    int64_t k = 0;
    // vpdpbusd with all-ones unsigned bytes: 4 signed bytes of a summed per int32 lane.
    for (; k + 64 <= K; k += 64) s = _mm512_dpbusd_epi32(s, ones, _mm512_loadu_si512(row + k));
    if (k < K) {
      const __mmask64 t = (__mmask64(1) << (K - k)) - 1;
      s = _mm512_dpbusd_epi32(s, ones, _mm512_maskz_loadu_epi8(t, row + k));
    }
    corr[i] = static_cast<int32_t>(static_cast<uint32_t>(_mm512_reduce_add_epi32(s)) * 128u);
  }
  for (int64_t k0 = 0; k0 < K; k0 += kc) {
    const int64_t kn = K - k0 < kc ? K - k0 : kc;
    const bool first = k0 == 0, last = k0 + kn == K;
    const int64_t groups = kn / 4, r = kn % 4, kt = k0 + 4 * groups;
    for (int64_t s0 = n0; s0 < n1; s0 += 64 * sb) {
      const int64_t s1 = n1 - s0 < 64 * sb ? n1 : s0 + 64 * sb;
      if (few && s1 - s0 > 16) {
        // Few rows: the block is interleaved in registers, once per row tile anyway.
        const int rows = static_cast<int>(M);
        const int64_t nc = s1 - s0;
        pick_block(rows)(a, lda, b + s0, ldb, k0, groups, nc, c);
        if (r != 0) {
          interleave(b + s0, ldb, kt, 0, r, nc, buf);
          tail_group(rows, a, lda, kt, r, buf, c);
        }
        finish<false>(rows, c, nc, first, last, corr, out + s0, ldo);
        continue;
      }
      if constexpr (NK) {
        interleave_wide_nk(b, ldb, k0, groups, r, s0, s1, buf, bstride);
      } else {
        interleave_wide(b, ldb, k0, groups, r, s0, s1, buf, bstride);
      }
      for (int64_t c0 = s0; c0 < s1; c0 += 64) {
        const int64_t nc = s1 - c0 < 64 ? s1 - c0 : 64;
        const int8_t* bb = buf + (c0 - s0) / 64 * bstride;
        if (nc <= 16) {
          for (int64_t m = 0; m < M; m += kMR16) {
            const int rows = static_cast<int>(M - m < kMR16 ? M - m : kMR16);
            const int8_t* am = a + m * lda;
            pick_block16(rows)(am, lda, bb, k0, groups, c);
            if (r != 0) tail_group16(rows, am, lda, kt, r, bb + groups * 64, c);
            finish16(rows, c, nc, first, last, corr + m, out + m * ldo + c0, ldo);
          }
          continue;
        }
        for (int64_t m = 0; m < M; m += kMRBuf) {
          const int rows = static_cast<int>(M - m < kMRBuf ? M - m : kMRBuf);
          const int8_t* am = a + m * lda;
          if (first && last && r == 0 && nc == 64) {
            pick_block_buf<true>(rows)(am, lda, bb, k0, groups, corr + m, out + m * ldo + c0, ldo);
            continue;
          }
          pick_block_buf<false>(rows)(am, lda, bb, k0, groups, nullptr, c, 64);
          if (r != 0) tail_group(rows, am, lda, kt, r, bb + groups * 256, c);
          finish<true>(rows, c, nc, first, last, corr + m, out + m * ldo + c0, ldo);
        }
      }
    }
  }
}

}  // namespace

TQ_TARGET_AVX512VNNI void gemm_mm_direct__avx512vnni(const int8_t* a, int64_t lda, int64_t M,
                                                     const int8_t* b, int64_t ldb, int64_t K,
                                                     int64_t n0, int64_t n1, int32_t* out,
                                                     int64_t ldo) {
  mm_direct<false>(a, lda, M, b, ldb, K, n0, n1, out, ldo);
}

TQ_TARGET_AVX512VNNI void gemm_mm_direct_nk__avx512vnni(const int8_t* a, int64_t lda, int64_t M,
                                                        const int8_t* w, int64_t ldw, int64_t K,
                                                        int64_t n0, int64_t n1, int32_t* out,
                                                        int64_t ldo) {
  mm_direct<true>(a, lda, M, w, ldw, K, n0, n1, out, ldo);
}

// ---- int8_mm with b = w.t() (unit stride along K), few rows of a ----
// Dot products of rows of a with rows of w, both read in place, 64 k per vector: nothing is
// packed, so w (the whole cost at M = 1) is read once and never written. w's bytes are flipped
// to uint8 for vpdpbusd (x ^ 0x80 = x + 128), which adds 128 * sum_k a[m, k] to out[m, n]; the
// store subtracts it. Each int32 lane sums 4 products per step and wraps modulo 2^32 like the
// packed kernels' lanes; the horizontal sum wraps alike, and the corrected value is exact by
// K <= kMaxK. A last partial vector loads under a byte mask: a's zeros there face w's 0x80.
namespace {

constexpr int64_t kDotAhead = 512;  // bytes of prefetch distance along a row of w

template <int MR, int NR>
TQ_TARGET_AVX512VNNI void dot_tile(const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw,
                                   int64_t K, const int32_t* corr, int32_t* out, int64_t ldo) {
  __m512i acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi32(static_cast<int32_t>(0x80808080u));
  const __mmask64 tail = K % 64 == 0 ? 0 : (__mmask64{1} << (K % 64)) - 1;
  const int64_t full = K - K % 64;
  for (int64_t k = 0; k <= full; k += 64) {
    const __mmask64 km = k < full ? ~__mmask64{0} : tail;
    if (km == 0) break;
    // An address, never dereferenced: formed as an integer, since it may lie past w.
    const uintptr_t pf = reinterpret_cast<uintptr_t>(w) +
                         static_cast<uintptr_t>(k + kDotAhead < K ? k + kDotAhead
                                                                  : NR * ldw + (k + kDotAhead - K));
    __m512i wv[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      // The rows of w are short streams (K bytes each), where the hardware prefetchers barely
      // ramp up before the tile moves on: fetched kDotAhead bytes ahead, and near a row's end
      // the next tile's row (prefetches past the end of w are harmless, they never fault).
      _mm_prefetch(reinterpret_cast<const char*>(pf + static_cast<uintptr_t>(j * ldw)), _MM_HINT_T0);
      wv[j] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(km, w + j * ldw + k), flip);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_maskz_loadu_epi8(km, a + i * lda + k);
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], wv[j], av);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j)
      out[i * ldo + j] = static_cast<int32_t>(
          static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[i][j])) - static_cast<uint32_t>(corr[i]));
}

using DotFn = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, const int32_t*,
                       int32_t*, int64_t);

// Up to 8 columns per tile for 1 or 2 rows of a (more rows of w in flight; 16 accumulators at
// most), 4 for 3 or 4 rows.
template <int MR>
DotFn dot_for(int64_t nr) {
  if constexpr (MR <= 2) {
    switch (nr) {
      case 5: return &dot_tile<MR, 5>;
      case 6: return &dot_tile<MR, 6>;
      case 7: return &dot_tile<MR, 7>;
      case 8: return &dot_tile<MR, 8>;
      default: break;
    }
  }
  return nr == 1 ? &dot_tile<MR, 1> : nr == 2 ? &dot_tile<MR, 2> : nr == 3 ? &dot_tile<MR, 3>
                                                                           : &dot_tile<MR, 4>;
}

DotFn pick_dot(int64_t mr, int64_t nr) {
  return mr == 1 ? dot_for<1>(nr) : mr == 2 ? dot_for<2>(nr) : mr == 3 ? dot_for<3>(nr)
                                                                       : dot_for<4>(nr);
}

}  // namespace

TQ_TARGET_AVX512VNNI void gemm_mm_nk__avx512vnni(const int8_t* a, int64_t lda, int64_t M,
                                                 const int8_t* w, int64_t ldw, int64_t K,
                                                 int64_t n0, int64_t n1, int32_t* out,
                                                 int64_t ldo) {
  if (M <= 0 || n1 <= n0) return;
  thread_local std::vector<int32_t> corr_buf;
  int32_t* corr = scratch(corr_buf, static_cast<size_t>(M));
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t i = 0; i < M; ++i) {  // 128 * sum_k a[i, k], modulo 2^32
    const int8_t* row = a + i * lda;
    __m512i s = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) s = _mm512_dpbusd_epi32(s, ones, _mm512_loadu_si512(row + k));
    if (k < K) {
      s = _mm512_dpbusd_epi32(s, ones,
                              _mm512_maskz_loadu_epi8((__mmask64{1} << (K - k)) - 1, row + k));
    }
    corr[i] = static_cast<int32_t>(static_cast<uint32_t>(_mm512_reduce_add_epi32(s)) * 128u);
  }
  // Blocks of 16 rows of w (64 KiB at K = 4096: L2) shared by every row tile of a.
  constexpr int64_t kNB = 16, kDotMR = 4;
  for (int64_t nb = n0; nb < n1; nb += kNB) {
    const int64_t ne = n1 - nb < kNB ? n1 : nb + kNB;
    for (int64_t m = 0; m < M; m += kDotMR) {
      const int64_t mr = M - m < kDotMR ? M - m : kDotMR, tn = mr <= 2 ? 8 : 4;
      for (int64_t n = nb; n < ne; n += tn) {
        const int64_t nr = ne - n < tn ? ne - n : tn;
        pick_dot(mr, nr)(a + m * lda, lda, w + n * ldw, ldw, K, corr + m, out + m * ldo + n, ldo);
      }
    }
  }
}

#else  // not x86: never selected.

void gemm_mm_direct__avx512vnni(const int8_t*, int64_t, int64_t, const int8_t*, int64_t, int64_t,
                                int64_t, int64_t, int32_t*, int64_t) {}
void gemm_mm_nk__avx512vnni(const int8_t*, int64_t, int64_t, const int8_t*, int64_t, int64_t,
                            int64_t, int64_t, int32_t*, int64_t) {}
void gemm_mm_direct_nk__avx512vnni(const int8_t*, int64_t, int64_t, const int8_t*, int64_t,
                                   int64_t, int64_t, int64_t, int32_t*, int64_t) {}
#endif

}  // namespace cpu
}  // namespace torchquant
