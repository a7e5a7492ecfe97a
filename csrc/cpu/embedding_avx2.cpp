// AVX2 row-wise quantized embedding bag: 8 columns per vector, up to 64 columns of a bag's
// accumulator held in registers while its rows stream by; the next rows are prefetched (a
// random row of a large table is a cache miss, which is what this kernel waits on). Every
// element goes through the same float operations, in the same order, as the scalar kernel:
// the results are bit-identical.
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

constexpr int64_t kAhead = 8;  // rows prefetched ahead

// Values d .. d + 7 of a row as float.
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

// Columns [d0, d0 + 8 * V) of one bag, V vectors in registers. kMode and kWeighted are
// template parameters so that the loop over a bag's rows carries no branch but the padding test.
template <int kBits, int V, BagMode kMode, bool kWeighted>
TQ_TARGET_AVX2 inline void bag_block(const EmbeddingTable& t, const int64_t* idx, int64_t n,
                                     const float* weights, int64_t padding_idx, int64_t d0,
                                     float* out) {
  __m256 acc[V];
  for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_ps();
  int64_t i = 0;
  if (kMode == BagMode::Max) {
    // The first counted row initializes the accumulator.
    for (; i < n; ++i) {
      if (idx[i] == padding_idx) continue;
      const uint8_t* row = t.data + idx[i] * t.row_stride;
      const __m256 s = _mm256_set1_ps(row_scale(t, row));
      const __m256 z = _mm256_set1_ps(row_zero_point(t, row));
      for (int v = 0; v < V; ++v) acc[v] = _mm256_mul_ps(_mm256_sub_ps(load8<kBits>(row, d0 + 8 * v), z), s);
      ++i;
      break;
    }
  }
  for (; i < n; ++i) {
    if (i + kAhead < n) {
      const uint8_t* ahead = t.data + idx[i + kAhead] * t.row_stride;
      _mm_prefetch(reinterpret_cast<const char*>(ahead + d0 * kBits / 8), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ahead + t.qparams_offset), _MM_HINT_T0);
    }
    if (idx[i] == padding_idx) continue;
    const uint8_t* row = t.data + idx[i] * t.row_stride;
    const __m256 s = _mm256_set1_ps(row_scale(t, row));
    const __m256 z = _mm256_set1_ps(row_zero_point(t, row));
    if (kMode == BagMode::Max) {
      for (int v = 0; v < V; ++v) {
        const __m256 x = _mm256_mul_ps(_mm256_sub_ps(load8<kBits>(row, d0 + 8 * v), z), s);
        acc[v] = _mm256_max_ps(x, acc[v]);  // x > acc ? x : acc, as the scalar
      }
    } else if (kWeighted) {
      const __m256 w = _mm256_set1_ps(weights[i]);
      for (int v = 0; v < V; ++v) {
        const __m256 x = _mm256_mul_ps(_mm256_sub_ps(load8<kBits>(row, d0 + 8 * v), z), s);
        acc[v] = _mm256_add_ps(acc[v], _mm256_mul_ps(x, w));
      }
    } else {
      for (int v = 0; v < V; ++v) {
        const __m256 x = _mm256_mul_ps(_mm256_sub_ps(load8<kBits>(row, d0 + 8 * v), z), s);
        acc[v] = _mm256_add_ps(acc[v], x);
      }
    }
  }
  for (int v = 0; v < V; ++v) _mm256_storeu_ps(out + d0 + 8 * v, acc[v]);
}

template <int kBits, int V>
TQ_TARGET_AVX2 inline void bag_block(const EmbeddingTable& t, const int64_t* idx, int64_t n,
                                     const float* weights, int64_t padding_idx, BagMode mode,
                                     int64_t d0, float* out) {
  if (mode == BagMode::Max) {
    bag_block<kBits, V, BagMode::Max, false>(t, idx, n, weights, padding_idx, d0, out);
  } else if (weights != nullptr) {
    bag_block<kBits, V, BagMode::Sum, true>(t, idx, n, weights, padding_idx, d0, out);
  } else {
    bag_block<kBits, V, BagMode::Sum, false>(t, idx, n, weights, padding_idx, d0, out);
  }
}

template <int kBits>
TQ_TARGET_AVX2 void bag(const EmbeddingTable& t, const int64_t* idx, int64_t n, const float* weights,
                        int64_t padding_idx, BagMode mode, float* out) {
  const int64_t D = t.dim;
  int64_t d = 0;
  for (; d + 64 <= D; d += 64) bag_block<kBits, 8>(t, idx, n, weights, padding_idx, mode, d, out);
  for (; d + 8 <= D; d += 8) bag_block<kBits, 1>(t, idx, n, weights, padding_idx, mode, d, out);
  int64_t count = 0;
  if (d < D) {
    // The last D % 8 columns: the scalar formula.
    for (int64_t k = d; k < D; ++k) out[k] = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      if (idx[i] == padding_idx) continue;
      const uint8_t* row = t.data + idx[i] * t.row_stride;
      const float s = row_scale(t, row), z = row_zero_point(t, row);
      for (int64_t k = d; k < D; ++k) {
        float v = (static_cast<float>(row_value(t, row, k)) - z) * s;
        if (mode == BagMode::Max) {
          out[k] = (count == 0 || v > out[k]) ? v : out[k];
        } else {
          if (weights != nullptr) v = v * weights[i];
          out[k] = out[k] + v;
        }
      }
      ++count;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) count += idx[i] != padding_idx;
  }
  if (mode == BagMode::Mean && count > 0) {
    const float c = static_cast<float>(count);
    const __m256 cv = _mm256_set1_ps(c);
    int64_t k = 0;
    for (; k + 8 <= D; k += 8) _mm256_storeu_ps(out + k, _mm256_div_ps(_mm256_loadu_ps(out + k), cv));
    for (; k < D; ++k) out[k] = out[k] / c;
  }
}

}  // namespace

TQ_TARGET_AVX2 void embedding_bag__avx2(const EmbeddingTable& t, const int64_t* idx, int64_t n,
                                        const float* weights, int64_t padding_idx, BagMode mode,
                                        float* out) {
  if (t.bits == 8) {
    bag<8>(t, idx, n, weights, padding_idx, mode, out);
  } else {
    bag<4>(t, idx, n, weights, padding_idx, mode, out);
  }
}

#else  // not x86: the scalar kernel stands in (never chosen: cpu_isa() is scalar there).

void embedding_bag__avx2(const EmbeddingTable& t, const int64_t* idx, int64_t n,
                         const float* weights, int64_t padding_idx, BagMode mode, float* out) {
  embedding_bag__scalar(t, idx, n, weights, padding_idx, mode, out);
}

#endif

}  // namespace cpu
}  // namespace torchquant
