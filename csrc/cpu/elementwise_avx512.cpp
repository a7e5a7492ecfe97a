// AVX-512 VBMI lookup_table kernel: 64 codes per step, vpermi2b picks each code's entry from a
// 128-byte half of the table (index bits 0-6), two such picks cover both halves, and the code's
// top bit selects between them. Compiled with its own target attribute; called only where CPUID
// reports VBMI (Ice Lake and later, Zen 4), else the AVX2 kernel serves.
#include <immintrin.h>

#include "cpu/elementwise_kernels.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86

#define TQ_TARGET_AVX512VBMI __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vbmi")))

bool cpu_has_avx512vbmi() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi");
}

TQ_TARGET_AVX512VBMI void lookup_table__avx512vbmi(const uint8_t* a, const uint8_t* table, uint8_t* out,
                                                   int64_t n, uint8_t flip) {
  const __m512i t0 = _mm512_loadu_si512(table);
  const __m512i t1 = _mm512_loadu_si512(table + 64);
  const __m512i t2 = _mm512_loadu_si512(table + 128);
  const __m512i t3 = _mm512_loadu_si512(table + 192);
  const __m512i vflip = _mm512_set1_epi8(static_cast<char>(flip));
  auto step = [&](__m512i v) TQ_TARGET_AVX512VBMI {
    v = _mm512_xor_si512(v, vflip);
    const __m512i low = _mm512_permutex2var_epi8(t0, v, t1);   // entries 0-127
    const __m512i high = _mm512_permutex2var_epi8(t2, v, t3);  // entries 128-255
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), low, high);
  };
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    _mm512_storeu_si512(out + i, step(_mm512_loadu_si512(a + i)));
  }
  if (i < n) {  // the tail: masked load and store, no read past the end
    const __mmask64 m = (uint64_t{1} << (n - i)) - 1;  // n - i in [1, 63]
    _mm512_mask_storeu_epi8(out + i, m, step(_mm512_maskz_loadu_epi8(m, a + i)));
  }
}

#else  // not x86

bool cpu_has_avx512vbmi() { return false; }

void lookup_table__avx512vbmi(const uint8_t* a, const uint8_t* table, uint8_t* out, int64_t n, uint8_t flip) {
  lookup_table__scalar(a, table, out, n, flip);
}

#endif

}  // namespace cpu
}  // namespace torchquant
