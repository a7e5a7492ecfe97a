// AVX-512 row-wise quantized embedding bag: 16 columns per vector, the loop of
// embedding_driver.h. Same float operations, each rounded once, as the scalar kernel:
// bit-identical results.
//
// 8-bit rows: per 16 columns, q widened and converted to float, then one FMA into the
// accumulator (fma(q, s, acc)); the row's bias is added to a scalar once per row, and to the
// accumulators once per bag. The three vector operations per 16 columns (the load's widening
// folded into vpmovzxbd) are what this loop is bound by on a Zen 4 class core, one fewer than
// fbgemm's (which adds the bias to its accumulators per row).
// 4-bit rows: a 4-bit value has 16 possible results, so each row's 16 values (k - z) * s, k =
// 0..15, are computed once (one vector) and its columns are looked up in it with vpermps, which
// reads the low 4 bits of each 32-bit lane. 32 columns come from 16 bytes: the low nibbles give
// the even columns, the high nibbles (lanes shifted right by 4) the odd ones; the accumulators
// hold even and odd columns apart and are interleaved once per bag. The accumulation is issued
// as fma(v, 1, acc), which rounds v + acc once as an addition does, but may run on the FMA
// pipes.
#include "cpu/embedding_kernels.h"
#include "cpu/isa.h"

#if TQ_X86
#include <immintrin.h>
// GCC 12 takes the self-initialized "undefined" operand inside the AVX-512 intrinsics for a
// maybe-uninitialized variable once they are inlined into the 4-bit max loop.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define TQ_EMBEDDING_TARGET TQ_TARGET_AVX512VNNI
#include "cpu/embedding_driver.h"
#endif

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

struct Avx512 {
  using vec = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kWide = 4;

  TQ_EMBEDDING_TARGET static vec zero() { return _mm512_setzero_ps(); }
  TQ_EMBEDDING_TARGET static vec set1(float f) { return _mm512_set1_ps(f); }
  TQ_EMBEDDING_TARGET static vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  TQ_EMBEDDING_TARGET static vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  TQ_EMBEDDING_TARGET static vec max(vec a, vec b) { return _mm512_max_ps(a, b); }
  TQ_EMBEDDING_TARGET static vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  TQ_EMBEDDING_TARGET static vec opaque_one() {
    __m512 one = _mm512_set1_ps(1.0f);
    __asm__("" : "+v"(one));
    return one;
  }
  TQ_EMBEDDING_TARGET static vec q8(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }

  // V even: for each 32 columns, the even ones, then the odd ones (see store); V = 1: in order.
  template <int V>
  TQ_EMBEDDING_TARGET static void values4(const uint8_t* row, int64_t d0, float s, float z, vec one, vec* x) {
    (void)one;
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 table = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(z)), _mm512_set1_ps(s));
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

  template <int kBits, int V>
  TQ_EMBEDDING_TARGET static void store(const vec* acc, float* out) {
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

  TQ_EMBEDDING_TARGET static int64_t first_bad(const int64_t* idx, int64_t n, int64_t rows) {
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
};

}  // namespace

TQ_TARGET_AVX512VNNI int64_t embedding_bags__avx512(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0,
                                                    int64_t b1) {
  return embedding_bags<Avx512>(t, a, b0, b1);
}

#else  // not x86: the scalar kernel stands in (never chosen: cpu_isa() is scalar there).

int64_t embedding_bags__avx512(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0, int64_t b1) {
  return embedding_bags__scalar(t, a, b0, b1);
}

#endif

}  // namespace cpu
}  // namespace torchquant
