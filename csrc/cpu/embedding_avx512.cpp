// AVX-512 row-wise quantized embedding bag: the AVX2 kernel's structure with 16 columns per
// vector (a row of 64 values is four loads), which halves the instructions per row. Same float
// operations in the same order per element as the scalar kernel: bit-identical results.
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

// Values d .. d + 15 of a row as float.
template <int kBits>
TQ_TARGET_AVX512VNNI inline __m512 load16(const uint8_t* row, int64_t d) {
  if (kBits == 8) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + d))));
  }
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + (d >> 1)));
  const __m128i m = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(b, m);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
}

template <int kBits, int V, BagMode kMode, bool kWeighted>
TQ_TARGET_AVX512VNNI inline void bag_block(const EmbeddingTable& t, const int64_t* idx, int64_t n,
                                           const float* weights, int64_t padding_idx, int64_t d0,
                                           float* out) {
  __m512 acc[V];
  for (int v = 0; v < V; ++v) acc[v] = _mm512_setzero_ps();
  int64_t i = 0;
  if (kMode == BagMode::Max) {
    for (; i < n; ++i) {
      if (idx[i] == padding_idx) continue;
      const uint8_t* row = t.data + idx[i] * t.row_stride;
      const __m512 s = _mm512_set1_ps(row_scale(t, row));
      const __m512 z = _mm512_set1_ps(row_zero_point(t, row));
      for (int v = 0; v < V; ++v) acc[v] = _mm512_mul_ps(_mm512_sub_ps(load16<kBits>(row, d0 + 16 * v), z), s);
      ++i;
      break;
    }
  }
  for (; i < n; ++i) {
    if (i + kAhead < n) {
      const uint8_t* ahead = t.data + idx[i + kAhead] * t.row_stride;
      _mm_prefetch(reinterpret_cast<const char*>(ahead + d0 * kBits / 8), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ahead + t.row_stride - 1), _MM_HINT_T0);
    }
    if (idx[i] == padding_idx) continue;
    const uint8_t* row = t.data + idx[i] * t.row_stride;
    const __m512 s = _mm512_set1_ps(row_scale(t, row));
    const __m512 z = _mm512_set1_ps(row_zero_point(t, row));
    if (kMode == BagMode::Max) {
      for (int v = 0; v < V; ++v) {
        const __m512 x = _mm512_mul_ps(_mm512_sub_ps(load16<kBits>(row, d0 + 16 * v), z), s);
        acc[v] = _mm512_max_ps(x, acc[v]);
      }
    } else if (kWeighted) {
      const __m512 w = _mm512_set1_ps(weights[i]);
      for (int v = 0; v < V; ++v) {
        const __m512 x = _mm512_mul_ps(_mm512_sub_ps(load16<kBits>(row, d0 + 16 * v), z), s);
        acc[v] = _mm512_add_ps(acc[v], _mm512_mul_ps(x, w));
      }
    } else {
      for (int v = 0; v < V; ++v) {
        const __m512 x = _mm512_mul_ps(_mm512_sub_ps(load16<kBits>(row, d0 + 16 * v), z), s);
        acc[v] = _mm512_add_ps(acc[v], x);
      }
    }
  }
  for (int v = 0; v < V; ++v) _mm512_storeu_ps(out + d0 + 16 * v, acc[v]);
}

template <int kBits, int V>
TQ_TARGET_AVX512VNNI inline void bag_block(const EmbeddingTable& t, const int64_t* idx, int64_t n,
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
TQ_TARGET_AVX512VNNI void bag(const EmbeddingTable& t, const int64_t* idx, int64_t n, const float* weights,
                              int64_t padding_idx, BagMode mode, float* out) {
  const int64_t D = t.dim;
  int64_t d = 0;
  for (; d + 64 <= D; d += 64) bag_block<kBits, 4>(t, idx, n, weights, padding_idx, mode, d, out);
  for (; d + 16 <= D; d += 16) bag_block<kBits, 1>(t, idx, n, weights, padding_idx, mode, d, out);
  if (d < D) {
    // The last D % 16 columns: the scalar kernel on a table view of those columns is not
    // possible for 4-bit rows that start mid-byte, so run the one-element formula here.
    EmbeddingTable tail = t;
    int64_t count = 0;
    for (int64_t k = d; k < D; ++k) out[k] = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      if (idx[i] == padding_idx) continue;
      const uint8_t* row = tail.data + idx[i] * tail.row_stride;
      const float s = row_scale(tail, row), z = row_zero_point(tail, row);
      for (int64_t k = d; k < D; ++k) {
        float v = (static_cast<float>(row_value(tail, row, k)) - z) * s;
        if (mode == BagMode::Max) {
          out[k] = (count == 0 || v > out[k]) ? v : out[k];
        } else {
          if (weights != nullptr) v = v * weights[i];
          out[k] = out[k] + v;
        }
      }
      ++count;
    }
  }
  if (mode == BagMode::Mean) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) count += idx[i] != padding_idx;
    if (count > 0) {
      const float c = static_cast<float>(count);
      const __m512 cv = _mm512_set1_ps(c);
      int64_t k = 0;
      for (; k + 16 <= D; k += 16) _mm512_storeu_ps(out + k, _mm512_div_ps(_mm512_loadu_ps(out + k), cv));
      for (; k < D; ++k) out[k] = out[k] / c;
    }
  }
}

}  // namespace

TQ_TARGET_AVX512VNNI void embedding_bag__avx512(const EmbeddingTable& t, const int64_t* idx, int64_t n,
                                                const float* weights, int64_t padding_idx, BagMode mode,
                                                float* out) {
  if (t.bits == 8) {
    bag<8>(t, idx, n, weights, padding_idx, mode, out);
  } else {
    bag<4>(t, idx, n, weights, padding_idx, mode, out);
  }
}

#else  // not x86: the scalar kernel stands in (never chosen: cpu_isa() is scalar there).

void embedding_bag__avx512(const EmbeddingTable& t, const int64_t* idx, int64_t n,
                           const float* weights, int64_t padding_idx, BagMode mode, float* out) {
  embedding_bag__scalar(t, idx, n, weights, padding_idx, mode, out);
}

#endif

}  // namespace cpu
}  // namespace torchquant
