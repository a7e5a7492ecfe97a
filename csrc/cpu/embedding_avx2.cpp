// AVX2 row-wise quantized embedding bag: 8 columns per vector, up to 64 columns of a bag's
// accumulator in registers while its rows stream by, the rows kAhead lookups ahead prefetched
// (across bag boundaries: a random row of a large table is a cache miss, which is what this
// kernel waits on). Same float operations, each rounded once, as the scalar kernel:
// bit-identical results. As in the AVX-512 kernel, the subtraction of the zero point and the
// accumulation are issued as fmsub(x, 1, z) / fma(x, 1, y), which round x - z / x + y once as a
// subtraction / addition does, and 4-bit rows are read by looking their 16 possible values up.
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

constexpr int64_t kAhead = 16;  // lookups prefetched ahead

// The row of an index of a later bag, not checked yet: an index outside the table prefetches
// row 0 instead.
TQ_TARGET_AVX2 inline void prefetch_row(const EmbeddingTable& t, int64_t j, int64_t first_byte) {
  const uint64_t r = static_cast<uint64_t>(j) < static_cast<uint64_t>(t.rows) ? static_cast<uint64_t>(j) : 0;
  const char* p = reinterpret_cast<const char*>(t.data + r * t.row_stride);
  _mm_prefetch(p + first_byte, _MM_HINT_T0);
  _mm_prefetch(p + t.row_stride - 1, _MM_HINT_T0);
}

TQ_TARGET_AVX2 inline int64_t first_bad(const int64_t* idx, int64_t n, int64_t rows) {
  uint64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint64_t>(idx[i]) >= static_cast<uint64_t>(rows);
  return bad ? first_bad_index(idx, n, rows) : -1;
}

// A 1.0 the compiler cannot see through, so that fma(x, one, y) stays an FMA.
TQ_TARGET_AVX2 inline __m256 opaque_one() {
  __m256 one = _mm256_set1_ps(1.0f);
  __asm__("" : "+x"(one));
  return one;
}

// Columns d .. d + 7 of a row as float, not yet dequantized.
template <int kBits>
TQ_TARGET_AVX2 inline __m256 load8(const uint8_t* row, int64_t d) {
  if (kBits == 8) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + d))));
  }
  int32_t packed;
  std::memcpy(&packed, row + (d >> 1), 4);
  const __m128i b = _mm_cvtsi32_si128(packed);
  const __m128i m = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(b, m);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
}

// One of the 16 values of a 4-bit row, by the low 4 bits of each lane of k: vpermps picks by
// the low 3 bits from the table of k = 0..7 or 8..15, bit 3 (moved to the sign) chooses.
TQ_TARGET_AVX2 inline __m256 lookup16(__m256 lo, __m256 hi, __m256i k) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, k), _mm256_permutevar8x32_ps(hi, k),
                          _mm256_castsi256_ps(_mm256_slli_epi32(k, 28)));
}

// Columns [d0, d0 + 8 V) of a row: (q - z) * s. 4-bit with V even: the row's 16 possible values
// computed once and looked up (as in the AVX-512 kernel); for each 16 columns, the even ones,
// then the odd ones (see store_block).
template <int kBits, int V>
TQ_TARGET_AVX2 inline void row_values(const EmbeddingTable& t, const uint8_t* row, int64_t d0, __m256 one,
                                      __m256* x) {
  const __m256 s = _mm256_set1_ps(row_scale(t, row));
  const __m256 z = _mm256_set1_ps(row_zero_point(t, row));
  if (kBits == 4 && V % 2 == 0) {
    const __m256 lo = _mm256_mul_ps(_mm256_fmsub_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), one, z), s);
    const __m256 hi = _mm256_mul_ps(_mm256_fmsub_ps(_mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15), one, z), s);
    for (int v = 0; v < V; v += 2) {
      const __m256i q =
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + (d0 + 8 * v) / 2)));
      x[v] = lookup16(lo, hi, q);
      x[v + 1] = lookup16(lo, hi, _mm256_srli_epi32(q, 4));
    }
  } else {
    for (int v = 0; v < V; ++v) x[v] = _mm256_mul_ps(_mm256_fmsub_ps(load8<kBits>(row, d0 + 8 * v), one, z), s);
  }
}

template <int kBits, int V>
TQ_TARGET_AVX2 inline void store_block(const __m256* acc, float* out) {
  if (kBits == 4 && V % 2 == 0) {
    for (int v = 0; v < V; v += 2) {
      const __m256 a = _mm256_unpacklo_ps(acc[v], acc[v + 1]);  // e0 o0 e1 o1 | e4 o4 e5 o5
      const __m256 b = _mm256_unpackhi_ps(acc[v], acc[v + 1]);  // e2 o2 e3 o3 | e6 o6 e7 o7
      _mm256_storeu_ps(out + 8 * v, _mm256_permute2f128_ps(a, b, 0x20));
      _mm256_storeu_ps(out + 8 * v + 8, _mm256_permute2f128_ps(a, b, 0x31));
    }
  } else {
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(out + 8 * v, acc[v]);
  }
}

// Columns [d0, d0 + 8 V) of one bag of n entries; the indices up to ahead (>= n) may be
// prefetched. kMode, kWeighted and kPad are template parameters so that the loop over a bag's
// rows carries no test but the prefetch bound.
template <int kBits, int V, BagMode kMode, bool kWeighted, bool kPad>
TQ_TARGET_AVX2 inline void bag_block(const EmbeddingTable& t, const int64_t* idx, int64_t n, int64_t ahead,
                                     const float* weights, int64_t padding_idx, int64_t d0, float* out) {
  const __m256 one = opaque_one();
  __m256 acc[V];
  for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_ps();
  const int64_t first_byte = d0 * kBits / 8;
  int64_t i = 0;
  if (kMode == BagMode::Max) {
    // The first counted row initializes the accumulator.
    for (; i < n; ++i) {
      if (kPad && idx[i] == padding_idx) continue;
      __m256 x[V];
      row_values<kBits, V>(t, t.data + idx[i] * t.row_stride, d0, one, x);
      for (int v = 0; v < V; ++v) acc[v] = x[v];
      ++i;
      break;
    }
  }
  for (; i < n; ++i) {
    if (i + kAhead < ahead) prefetch_row(t, idx[i + kAhead], first_byte);
    if (kPad && idx[i] == padding_idx) continue;
    __m256 x[V];
    row_values<kBits, V>(t, t.data + idx[i] * t.row_stride, d0, one, x);
    if (kMode == BagMode::Max) {
      for (int v = 0; v < V; ++v) acc[v] = _mm256_max_ps(x[v], acc[v]);  // x > acc ? x : acc, as the scalar
    } else if (kWeighted) {
      const __m256 w = _mm256_set1_ps(weights[i]);
      for (int v = 0; v < V; ++v) acc[v] = _mm256_fmadd_ps(_mm256_mul_ps(x[v], w), one, acc[v]);
    } else {
      for (int v = 0; v < V; ++v) acc[v] = _mm256_fmadd_ps(x[v], one, acc[v]);
    }
  }
  store_block<kBits, V>(acc, out + d0);
}

template <int kBits, int V>
TQ_TARGET_AVX2 inline void bag_block(const EmbeddingTable& t, const int64_t* idx, int64_t n, int64_t ahead,
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
TQ_TARGET_AVX2 void bag(const EmbeddingTable& t, const int64_t* idx, int64_t n, int64_t ahead,
                        const float* weights, int64_t padding_idx, BagMode mode, float* out) {
  const int64_t D = t.dim;
  int64_t d = 0;
  for (; d + 64 <= D; d += 64) bag_block<kBits, 8>(t, idx, n, ahead, weights, padding_idx, mode, d, out);
  for (; d + 8 <= D; d += 8) bag_block<kBits, 1>(t, idx, n, ahead, weights, padding_idx, mode, d, out);
  int64_t count;
  if (d < D) {
    // The last D % 8 columns: the scalar formula.
    count = bag_columns_scalar(t, idx, n, weights, padding_idx, mode, d, out);
  } else if (padding_idx >= 0) {
    count = 0;
    for (int64_t i = 0; i < n; ++i) count += idx[i] != padding_idx;
  } else {
    count = n;
  }
  if (mode == BagMode::Mean && count > 0) {
    const float c = static_cast<float>(count);
    const __m256 cv = _mm256_set1_ps(c);
    int64_t k = 0;
    for (; k + 8 <= D; k += 8) _mm256_storeu_ps(out + k, _mm256_div_ps(_mm256_loadu_ps(out + k), cv));
    for (; k < D; ++k) out[k] = out[k] / c;
  }
}

template <int kBits>
TQ_TARGET_AVX2 int64_t bags(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0, int64_t b1) {
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

TQ_TARGET_AVX2 int64_t embedding_bags__avx2(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0,
                                            int64_t b1) {
  return t.bits == 8 ? bags<8>(t, a, b0, b1) : bags<4>(t, a, b0, b1);
}

#else  // not x86: the scalar kernel stands in (never chosen: cpu_isa() is scalar there).

int64_t embedding_bags__avx2(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0, int64_t b1) {
  return embedding_bags__scalar(t, a, b0, b1);
}

#endif

}  // namespace cpu
}  // namespace torchquant
