// The 16 x 16 transpose of int32 lanes shared by the AVX-512 kernels that read a weight w [N, K]
// with unit stride along K: 16 rows (channels) of 64 bytes (16 groups of 4 k) become 16 vectors,
// one per group, holding channel c's 4 bytes in lane c: vpdpbusd's operand order for 16
// channels, i.e. one 4-k group of a packed panel (gemm_kernels.h).
#pragma once

#include <immintrin.h>

#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
// v[c] = row c in, v[g] = group g out. Always inlined on a local array indexed by constants only,
// so that the array lives in registers.
TQ_TARGET_AVX512VNNI __attribute__((always_inline)) inline void transpose16_epi32(__m512i v[16]) {
  // Within each 128-bit block L: 32-bit then 64-bit interleaves leave u[4q + j] holding group
  // 4L + j of rows 4q .. 4q + 3.
  __m512i t[16], u[16];
#pragma GCC unroll 8
  for (int p = 0; p < 8; ++p) {
    t[2 * p] = _mm512_unpacklo_epi32(v[2 * p], v[2 * p + 1]);
    t[2 * p + 1] = _mm512_unpackhi_epi32(v[2 * p], v[2 * p + 1]);
  }
#pragma GCC unroll 8
  for (int q = 0; q < 4; ++q) {
    u[4 * q] = _mm512_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 1] = _mm512_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 2] = _mm512_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
    u[4 * q + 3] = _mm512_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
  }
  // 128-bit block shuffles: 0x88 takes blocks 0, 2 of each operand, 0xDD blocks 1, 3.
#pragma GCC unroll 8
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88);
    t[4 + j] = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xDD);
    t[8 + j] = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88);
    t[12 + j] = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xDD);
  }
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) {
    v[j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88);
    v[8 + j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0xDD);
  }
}
#endif

}  // namespace cpu
}  // namespace torchquant
