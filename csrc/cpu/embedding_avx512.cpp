// AVX-512 row-wise quantized embedding bag: 16 columns per vector, up to 64 columns of a bag's
// accumulator in registers while its rows stream by, the rows kAhead lookups ahead prefetched
// (across bag boundaries: a random row of a large table is a cache miss, which is what this
// kernel waits on). Same float operations, each rounded once, as the scalar kernel:
// bit-identical results.
//
// 8-bit rows: q converted to float, then (q - z) * s. The subtraction and the accumulation are
// issued as fmsub(x, 1, z) and fma(v, 1, acc), which round the same exact value once as a
// subtraction / addition does, but may run on the FMA pipes next to the multiply (6 % faster
// than sub/add on a Zen 4 class core, where this loop is bound by its vector operations: the
// conversion, subtraction, multiply and add per 16 columns that exactness needs, against
// fbgemm's conversion and one FMA).
// 4-bit rows: a 4-bit value has 16 possible results, so each row's 16 values (k - z) * s, k =
// 0..15, are computed once (one vector) and its columns are looked up in it with vpermps, which
// reads the low 4 bits of each 32-bit lane. 32 columns come from 16 bytes: the low nibbles give
// the even columns, the high nibbles (lanes shifted right by 4) the odd ones; the accumulators
// hold even and odd columns apart and are interleaved once per bag.
#include <cstring>

#include "cpu/embedding_kernels.h"
#include "cpu/isa.h"

#if TQ_X86
#include <immintrin.h>
#endif

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

// Lookups prefetched ahead: 16 to 24 were best from a 1M-row table (8 and 48 or more slower).
constexpr int64_t kAhead = 16;

TQ_TARGET_AVX512VNNI inline int64_t first_bad(const int64_t* idx, int64_t n, int64_t rows) {
  const __m512i lim = _mm512_set1_epi64(rows);
  __mmask8 bad = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) bad |= _mm512_cmpge_epu64_mask(_mm512_loadu_si512(idx + i), lim);
  if (i < n) {
    const __mmask8 m = static_cast<__mmask8>((1u << (n - i)) - 1);
    bad |= _mm512_mask_cmpge_epu64_mask(m, _mm512_maskz_loadu_epi64(m, idx + i), lim);
  }
  return bad ? first_bad_index(idx, n, rows) : -1;
}

// The row of an index of a later bag, not checked yet: an index outside the table prefetches
// row 0 instead.
TQ_TARGET_AVX512VNNI inline void prefetch_row(const EmbeddingTable& t, int64_t j, int64_t first_byte) {
  const uint64_t r = static_cast<uint64_t>(j) < static_cast<uint64_t>(t.rows) ? static_cast<uint64_t>(j) : 0;
  const char* p = reinterpret_cast<const char*>(t.data + r * t.row_stride);
  _mm_prefetch(p + first_byte, _MM_HINT_T0);
  _mm_prefetch(p + t.row_stride - 1, _MM_HINT_T0);
}

// A 1.0 the compiler cannot see through, so that fma(x, one, y) stays an FMA (see above).
TQ_TARGET_AVX512VNNI inline __m512 opaque_one() {
  __m512 one = _mm512_set1_ps(1.0f);
  __asm__("" : "+v"(one));
  return one;
}

// Columns [d0, d0 + 16 V) of a row, as float values. 8-bit: in column order. 4-bit with V even:
// for each 32 columns, the even ones, then the odd ones (see interleave_store); V = 1: in order.
template <int kBits, int V>
TQ_TARGET_AVX512VNNI inline void row_values(const EmbeddingTable& t, const uint8_t* row, int64_t d0, __m512 one,
                                            __m512* x) {
  const __m512 s = _mm512_set1_ps(row_scale(t, row));
  const __m512 z = _mm512_set1_ps(row_zero_point(t, row));
  if (kBits == 8) {
    for (int v = 0; v < V; ++v) {
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + d0 + 16 * v));
      x[v] = _mm512_mul_ps(_mm512_fmsub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q)), one, z), s);
    }
  } else {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 table = _mm512_mul_ps(_mm512_sub_ps(iota, z), s);
    if (V % 2 == 0) {
      for (int v = 0; v < V; v += 2) {
        const __m512i q = _mm512_cvtepu8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + (d0 + 16 * v) / 2)));
        x[v] = _mm512_permutexvar_ps(q, table);
        x[v + 1] = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
      }
    } else {
      for (int v = 0; v < V; ++v) {
        // Bytes b0..b7 -> b0, b0 >> 4, b1, b1 >> 4, ...: the low nibble of each byte is the value.
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + (d0 + 16 * v) / 2));
        const __m128i q = _mm_unpacklo_epi8(b, _mm_srli_epi16(b, 4));
        x[v] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(q), table);
      }
    }
  }
}

template <int kBits, int V>
TQ_TARGET_AVX512VNNI inline void store_block(const __m512* acc, float* out) {
  if (kBits == 4 && V % 2 == 0) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int v = 0; v < V; v += 2) {
      _mm512_storeu_ps(out + 16 * v, _mm512_permutex2var_ps(acc[v], lo, acc[v + 1]));
      _mm512_storeu_ps(out + 16 * v + 16, _mm512_permutex2var_ps(acc[v], hi, acc[v + 1]));
    }
  } else {
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(out + 16 * v, acc[v]);
  }
}

// Columns [d0, d0 + 16 V) of one bag of n entries; the indices up to ahead (>= n) may be
// prefetched. kMode, kWeighted and kPad are template parameters so that the loop over a bag's
// rows carries no test but the prefetch bound.
template <int kBits, int V, BagMode kMode, bool kWeighted, bool kPad>
TQ_TARGET_AVX512VNNI inline void bag_block(const EmbeddingTable& t, const int64_t* idx, int64_t n, int64_t ahead,
                                           const float* weights, int64_t padding_idx, int64_t d0, float* out) {
  const __m512 one = opaque_one();
  __m512 acc[V];
  for (int v = 0; v < V; ++v) acc[v] = _mm512_setzero_ps();
  const int64_t first_byte = d0 * kBits / 8;
  int64_t i = 0;
  if (kMode == BagMode::Max) {
    // The first counted row initializes the accumulator.
    for (; i < n; ++i) {
      if (kPad && idx[i] == padding_idx) continue;
      __m512 x[V];
      row_values<kBits, V>(t, t.data + idx[i] * t.row_stride, d0, one, x);
      for (int v = 0; v < V; ++v) acc[v] = x[v];
      ++i;
      break;
    }
  }
  for (; i < n; ++i) {
    if (i + kAhead < ahead) prefetch_row(t, idx[i + kAhead], first_byte);
    if (kPad && idx[i] == padding_idx) continue;
    __m512 x[V];
    row_values<kBits, V>(t, t.data + idx[i] * t.row_stride, d0, one, x);
    if (kMode == BagMode::Max) {
      for (int v = 0; v < V; ++v) acc[v] = _mm512_max_ps(x[v], acc[v]);  // x > acc ? x : acc, as the scalar
    } else if (kWeighted) {
      const __m512 w = _mm512_set1_ps(weights[i]);
      for (int v = 0; v < V; ++v) acc[v] = _mm512_fmadd_ps(_mm512_mul_ps(x[v], w), one, acc[v]);
    } else {
      for (int v = 0; v < V; ++v) acc[v] = _mm512_fmadd_ps(x[v], one, acc[v]);
    }
  }
  store_block<kBits, V>(acc, out + d0);
}

template <int kBits, int V>
TQ_TARGET_AVX512VNNI inline void bag_block(const EmbeddingTable& t, const int64_t* idx, int64_t n, int64_t ahead,
                                           const float* weights, int64_t padding_idx, BagMode mode, int64_t d0,
                                           float* out) {
  const bool pad = padding_idx >= 0;
  if (mode == BagMode::Max) {
    if (pad) bag_block<kBits, V, BagMode::Max, false, true>(t, idx, n, ahead, weights, padding_idx, d0, out);
    else bag_block<kBits, V, BagMode::Max, false, false>(t, idx, n, ahead, weights, padding_idx, d0, out);
  } else if (weights != nullptr) {
    if (pad) bag_block<kBits, V, BagMode::Sum, true, true>(t, idx, n, ahead, weights, padding_idx, d0, out);
    else bag_block<kBits, V, BagMode::Sum, true, false>(t, idx, n, ahead, weights, padding_idx, d0, out);
  } else {
    if (pad) bag_block<kBits, V, BagMode::Sum, false, true>(t, idx, n, ahead, weights, padding_idx, d0, out);
    else bag_block<kBits, V, BagMode::Sum, false, false>(t, idx, n, ahead, weights, padding_idx, d0, out);
  }
}

template <int kBits>
TQ_TARGET_AVX512VNNI void bag(const EmbeddingTable& t, const int64_t* idx, int64_t n, int64_t ahead,
                              const float* weights, int64_t padding_idx, BagMode mode, float* out) {
  const int64_t D = t.dim;
  int64_t d = 0;
  for (; d + 64 <= D; d += 64) bag_block<kBits, 4>(t, idx, n, ahead, weights, padding_idx, mode, d, out);
  for (; d + 16 <= D; d += 16) bag_block<kBits, 1>(t, idx, n, ahead, weights, padding_idx, mode, d, out);
  int64_t count;
  if (d < D) {
    // The last D % 16 columns: the scalar formula.
    count = bag_columns_scalar(t, idx, n, weights, padding_idx, mode, d, out);
  } else if (padding_idx >= 0) {
    count = 0;
    for (int64_t i = 0; i < n; ++i) count += idx[i] != padding_idx;
  } else {
    count = n;
  }
  if (mode == BagMode::Mean && count > 0) {
    const float c = static_cast<float>(count);
    const __m512 cv = _mm512_set1_ps(c);
    int64_t k = 0;
    for (; k + 16 <= D; k += 16) _mm512_storeu_ps(out + k, _mm512_div_ps(_mm512_loadu_ps(out + k), cv));
    for (; k < D; ++k) out[k] = out[k] / c;
  }
}

template <int kBits>
TQ_TARGET_AVX512VNNI int64_t bags(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0, int64_t b1) {
  if (b0 >= b1) return -1;
  const int64_t end = bag_end(a, b1 - 1);  // prefetching stops at the last index of these bags
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t s = bag_begin(a, b), n = bag_end(a, b) - s;
    const int64_t bad = first_bad(a.idx + s, n, t.rows);
    if (bad >= 0) return s + bad;
    bag<kBits>(t, a.idx + s, n, end - s, a.weights ? a.weights + s : nullptr, a.padding_idx, a.mode,
               a.out + b * t.dim);
  }
  return -1;
}

}  // namespace

TQ_TARGET_AVX512VNNI int64_t embedding_bags__avx512(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0,
                                                    int64_t b1) {
  return t.bits == 8 ? bags<8>(t, a, b0, b1) : bags<4>(t, a, b0, b1);
}

#else  // not x86: the scalar kernel stands in (never chosen: cpu_isa() is scalar there).

int64_t embedding_bags__avx512(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0, int64_t b1) {
  return embedding_bags__scalar(t, a, b0, b1);
}

#endif

}  // namespace cpu
}  // namespace torchquant
