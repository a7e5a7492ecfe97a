// The AVX2 requantize epilogue (docs/quantization.md, "Requantization"), shared by the GEMM
// (gemm_avx2.cpp), the transposed convolution (conv_transpose_avx2.cpp) and the depthwise
// convolution (conv_dw_avx2.cpp): the float32 operations of gemm_epilogue_one in the same order
// (no FMA: -ffp-contract=off and no fmadd intrinsic), so every output is bit-identical to the
// scalar oracle. The two steps, dequant_lanes and quant_lanes, are written here once; the
// kernels' loops around them differ in how they pack and store.
#pragma once

#include <immintrin.h>

#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86

// The per-call constants of epilogue_chunk8.
struct EpiConsts256 {
  __m256 zero, inv, ozp, lo, hi;
};

TQ_TARGET_AVX2 inline EpiConsts256 epi_consts256(const GemmProblem& p) {
  const bool u8 = p.out_kind == GemmOut::QUInt8;
  return {_mm256_setzero_ps(), _mm256_set1_ps(p.out_inv_scale),
          _mm256_set1_ps(static_cast<float>(p.out_zp)), _mm256_set1_ps(u8 ? 0.0f : -128.0f),
          _mm256_set1_ps(u8 ? 255.0f : 127.0f)};
}

// The two steps of the epilogue, written once. The flags are plain arguments: the kernels that
// specialize on them pass compile-time constants, which fold away once these are inlined.
//
// y of 8 lanes: (float)corr * s, + bias (when has_bias), ReLU (when relu; 0 > y ? 0 : y: NaN and
// -0 pass through).
TQ_TARGET_AVX2 inline __attribute__((always_inline)) __m256 dequant_lanes(__m256i corr, __m256 s, bool has_bias,
                                                                          __m256 bias, bool relu) {
  __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(corr), s);
  if (has_bias) y = _mm256_add_ps(y, bias);
  if (relu) y = _mm256_max_ps(_mm256_setzero_ps(), y);
  return y;
}

// quantize_val of 8 lanes, as int32 lanes inside the output type: round half to even, + zero
// point, clamp; a NaN lane takes the bound in the clamp, then the zero point. nan_free (no NaN
// can reach here: GemmProblem::nan_free) leaves the NaN step out.
TQ_TARGET_AVX2 inline __attribute__((always_inline)) __m256i quant_lanes(__m256 y, const EpiConsts256& e,
                                                                         bool nan_free) {
  __m256 t = _mm256_add_ps(
      _mm256_round_ps(_mm256_mul_ps(y, e.inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), e.ozp);
  if (nan_free) {
    t = _mm256_min_ps(_mm256_max_ps(t, e.lo), e.hi);
  } else {
    const __m256 nan = _mm256_cmp_ps(t, t, _CMP_UNORD_Q);
    t = _mm256_blendv_ps(_mm256_min_ps(_mm256_max_ps(t, e.lo), e.hi), e.ozp, nan);
  }
  return _mm256_cvtps_epi32(t);
}

// Output elements o .. o + 7 of p.out from their zero-point-corrected sums corr and scales s
// (a_scale * w_scale; unused for int32 output); bias: the 8 columns' biases, or null.
TQ_TARGET_AVX2 inline void epilogue_chunk8(const GemmProblem& p, const EpiConsts256& e,
                                           __m256i corr, __m256 s, const float* bias, int64_t o) {
  if (p.out_kind == GemmOut::Int32) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<int32_t*>(p.out) + o), corr);
    return;
  }
  const bool has_bias = bias != nullptr;
  const __m256 y = dequant_lanes(corr, s, has_bias, has_bias ? _mm256_loadu_ps(bias) : e.zero, p.relu);
  if (p.out_kind == GemmOut::Float) {
    _mm256_storeu_ps(static_cast<float*>(p.out) + o, y);
    return;
  }
  const __m256i q = quant_lanes(y, e, false);
  // Integers inside the 8-bit type: both packs are exact.
  const __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
  const bool u8 = p.out_kind == GemmOut::QUInt8;
  const __m128i bytes = u8 ? _mm_packus_epi16(h, h) : _mm_packs_epi16(h, h);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(static_cast<uint8_t*>(p.out) + o), bytes);
}

#endif  // TQ_X86

}  // namespace cpu
}  // namespace torchquant
