// AVX2 row-wise quantized embedding bag: 8 columns per vector, the loop of
// embedding_driver.h. Same float operations, each rounded once, as the scalar kernel:
// bit-identical results. As in the AVX-512 kernel, 8-bit rows take one FMA per 8 columns
// (fma(q, s, acc), the row's bias summed apart), 4-bit rows are read by looking their 16
// possible values up, and an addition may be issued as fma(x, 1, y) (the same single rounding).
#include <cstring>

#include "cpu/embedding_kernels.h"
#include "cpu/isa.h"

#if TQ_X86
#include <immintrin.h>
#define TQ_EMBEDDING_TARGET TQ_TARGET_AVX2
#include "cpu/embedding_driver.h"
#endif

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

struct Avx2 {
  using vec = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kWide = 8;

  TQ_EMBEDDING_TARGET static vec zero() { return _mm256_setzero_ps(); }
  TQ_EMBEDDING_TARGET static vec set1(float f) { return _mm256_set1_ps(f); }
  TQ_EMBEDDING_TARGET static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  TQ_EMBEDDING_TARGET static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  TQ_EMBEDDING_TARGET static vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
  TQ_EMBEDDING_TARGET static vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  TQ_EMBEDDING_TARGET static vec opaque_one() {
    __m256 one = _mm256_set1_ps(1.0f);
    __asm__("" : "+x"(one));
    return one;
  }
  TQ_EMBEDDING_TARGET static vec q8(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }

  // One of the 16 values of a 4-bit row, by the low 4 bits of each lane of k: vpermps picks by
  // the low 3 bits from the table of k = 0..7 or 8..15, bit 3 (moved to the sign) chooses.
  TQ_EMBEDDING_TARGET static vec lookup16(vec lo, vec hi, __m256i k) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, k), _mm256_permutevar8x32_ps(hi, k),
                            _mm256_castsi256_ps(_mm256_slli_epi32(k, 28)));
  }

  // V even: the row's 16 possible values computed once and looked up; for each 16 columns, the
  // even ones, then the odd ones (see store). V = 1: 8 columns in order, computed.
  template <int V>
  TQ_EMBEDDING_TARGET static void values4(const uint8_t* row, int64_t d0, float s, float z, vec one, vec* x) {
    const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
    if (V % 2 == 0) {
      const __m256 lo = _mm256_mul_ps(_mm256_fmsub_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), one, zv), sv);
      const __m256 hi = _mm256_mul_ps(_mm256_fmsub_ps(_mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15), one, zv), sv);
      for (int v = 0; v < V; v += 2) {
        const __m256i q =
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + (d0 + 8 * v) / 2)));
        x[v] = lookup16(lo, hi, q);
        x[v + 1] = lookup16(lo, hi, _mm256_srli_epi32(q, 4));
      }
    } else {
      for (int v = 0; v < V; ++v) {
        int32_t packed;
        std::memcpy(&packed, row + (d0 + 8 * v) / 2, 4);
        const __m128i b = _mm_cvtsi32_si128(packed);
        const __m128i m = _mm_set1_epi8(0x0F);
        const __m128i q = _mm_unpacklo_epi8(_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
        const __m256 qf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
        x[v] = _mm256_mul_ps(_mm256_fmsub_ps(qf, one, zv), sv);
      }
    }
  }

  template <int kBits, int V>
  TQ_EMBEDDING_TARGET static void store(const vec* acc, float* out) {
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

  TQ_EMBEDDING_TARGET static int64_t first_bad(const int64_t* idx, int64_t n, int64_t rows) {
    uint64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint64_t>(idx[i]) >= static_cast<uint64_t>(rows);
    return bad ? first_bad_index(idx, n, rows) : -1;
  }
};

}  // namespace

TQ_TARGET_AVX2 int64_t embedding_bags__avx2(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0,
                                            int64_t b1) {
  return embedding_bags<Avx2>(t, a, b0, b1);
}

#else  // not x86: the scalar kernel stands in (never chosen: cpu_isa() is scalar there).

int64_t embedding_bags__avx2(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0, int64_t b1) {
  return embedding_bags__scalar(t, a, b0, b1);
}

#endif

}  // namespace cpu
}  // namespace torchquant
