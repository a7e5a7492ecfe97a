// The AVX-512 requantize epilogue (docs/quantization.md, "Requantization"), shared by the GEMM
// (gemm_avx512.cpp) and the transposed convolution (conv_transpose_avx512.cpp): the float32
// operations of gemm_epilogue_one in the same order (no FMA: -ffp-contract=off and no fmadd
// intrinsic), so every output is bit-identical to the scalar oracle.
#pragma once

#include <immintrin.h>

#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86

// The per-call constants of epilogue_chunk16.
struct EpiConsts512 {
  __m512 zero, inv, ozp, lo, hi;
};

TQ_TARGET_AVX512VNNI inline EpiConsts512 epi_consts512(const GemmProblem& p) {
  const bool u8 = p.out_kind == GemmOut::QUInt8;
  return {_mm512_setzero_ps(), _mm512_set1_ps(p.out_inv_scale),
          _mm512_set1_ps(static_cast<float>(p.out_zp)), _mm512_set1_ps(u8 ? 0.0f : -128.0f),
          _mm512_set1_ps(u8 ? 255.0f : 127.0f)};
}

// Output elements o .. o + 15 of p.out (lanes under k) from their zero-point-corrected sums corr
// and scales s (a_scale * w_scale); bias: the 16 columns' biases, or null. A whole chunk packs
// in a register and stores plainly: the masked narrowing store (vpmovdb to memory) was the
// slowest instruction of the epilogue on AMD Zen 4.
TQ_TARGET_AVX512VNNI inline void epilogue_chunk16(const GemmProblem& p, const EpiConsts512& e,
                                                  __m512i corr, __m512 s, const float* bias,
                                                  __mmask16 k, int64_t o) {
  if (p.out_kind == GemmOut::Int32) {
    _mm512_mask_storeu_epi32(static_cast<int32_t*>(p.out) + o, k, corr);
    return;
  }
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), s);
  if (bias != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(k, bias));
  if (p.relu) y = _mm512_max_ps(e.zero, y);  // 0 > y ? 0 : y: NaN and -0 pass through
  if (p.out_kind == GemmOut::Float) {
    _mm512_mask_storeu_ps(static_cast<float*>(p.out) + o, k, y);
    return;
  }
  // quantize_val: round half to even (roundscale, MXCSR not consulted), clamp, NaN -> zp.
  __m512 t = _mm512_add_ps(
      _mm512_roundscale_ps(_mm512_mul_ps(y, e.inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
      e.ozp);
  if (p.nan_free) {
    t = _mm512_min_ps(_mm512_max_ps(t, e.lo), e.hi);
  } else {
    const __mmask16 nan = _mm512_cmp_ps_mask(t, t, _CMP_UNORD_Q);
    t = _mm512_min_ps(_mm512_max_ps(t, e.lo), e.hi);
    t = _mm512_mask_blend_ps(nan, t, e.ozp);
  }
  // Integer-valued and inside the 8-bit type: the conversion and the truncating pack are exact.
  uint8_t* dst = static_cast<uint8_t*>(p.out) + o;
  if (k == __mmask16(0xFFFF)) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(t)));
  } else {
    _mm512_mask_cvtepi32_storeu_epi8(dst, k, _mm512_cvtps_epi32(t));
  }
}

// One output row of ncols columns starting at n0, from its raw accumulators (the AVX-512 VNNI
// and AMX GEMMs' int32 tiles). zc[j] is the zero-point correction zp * col_sums[n0 + j] and sc[j] the scale a_scale * w_scale[n0 + j] of
// column n0 + j (the same int32 and float32 operations as the oracle's, made once per panel
// group for per-tensor activations, or here per row when they are per row). A last chunk of
// fewer than 16 columns runs the same vector sequence under a lane mask (masked loads read
// nothing past N, masked stores write nothing past it): with N = 10 the whole output is such
// a chunk, and going element by element through the oracle cost more than the multiply.
template <bool kPre>
TQ_TARGET_AVX512VNNI inline void epilogue_row512(const GemmProblem& p, const EpiConsts512& e,
                                                 const int32_t* acc, int64_t m, int64_t n0,
                                                 int64_t ncols, int32_t zp, float a_scale,
                                                 const int32_t* zc, const float* sc) {
  const __m512i vzp = _mm512_set1_epi32(zp);
  const __m512 vas = _mm512_set1_ps(a_scale);
  for (int64_t j = 0; j < ncols; j += 16) {
    const __mmask16 k = ncols - j >= 16 ? __mmask16(0xFFFF)
                                        : static_cast<__mmask16>((1u << (ncols - j)) - 1u);
    const int64_t n = n0 + j;
    // acc (and zc, sc) hold 16 lanes per chunk (the register tile's width): read whole.
    const __m512i corr = _mm512_sub_epi32(
        _mm512_loadu_si512(acc + j),
        kPre ? _mm512_loadu_si512(zc + j)
             : _mm512_mullo_epi32(vzp, _mm512_maskz_loadu_epi32(k, p.col_sums + n)));
    const __m512 s = p.out_kind == GemmOut::Int32 ? e.zero
                     : kPre ? _mm512_loadu_ps(sc + j)
                            : _mm512_mul_ps(vas, _mm512_maskz_loadu_ps(k, p.w_scale + n));
    epilogue_chunk16(p, e, corr, s, p.bias != nullptr ? p.bias + n : nullptr, k, m * p.ldo + n);
  }
}

#endif  // TQ_X86

}  // namespace cpu
}  // namespace torchquant
