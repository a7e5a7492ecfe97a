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

// The fused requantize of int8 / uint8 outputs (nan_free, per-tensor activation qparams), in
// two steps that the AVX-512 VNNI micro-kernel (in registers) and the AMX block epilogue (from
// its int32 tile) share. Always inlined: a call would spill the micro-kernel's accumulators.
//
// requant16: 16 lanes of t = round(y * inv) with y = (acc - zc) * sc + bc (zc, sc, bc: 64-byte
// aligned), the float32 operations of gemm_dequant / quantize_val in the same order;
// integer-valued (the clamp at 2^30 keeps the conversion in range, and -inf or anything below
// -2^31 converts to INT32_MIN). One conversion with embedded round-to-nearest-even (MXCSR not
// consulted): the same integer as roundscale then an exact conversion.
TQ_TARGET_AVX512VNNI inline __attribute__((always_inline)) __m512i requant16(
    __m512i acc, const int32_t* zc, const float* sc, const float* bc, float inv) {
  const __m512 y = _mm512_add_ps(
      _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_load_si512(zc))),
                    _mm512_load_ps(sc)),
      _mm512_load_ps(bc));
  const __m512 u = _mm512_min_ps(_mm512_mul_ps(y, _mm512_set1_ps(inv)), _mm512_set1_ps(1073741824.0f));
  return _mm512_cvt_roundps_epi32(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// requant_pack: four chunks of t into 64 bytes, chunk i in bytes [16i, 16i + 16): int16
// saturation, a saturating + zero point and the byte pack's saturation give
// clamp(t + zp, lo, hi) as quantize_val does (whatever saturates at int16 lies far outside
// [lo, hi] either way). ReLU folds into the clamp: y < 0 gives t <= 0, so max(t + zp, zp) = zp,
// the output of y = 0; y >= 0 leaves t + zp >= zp unchanged. A bias of +0.0 for none changes at
// most the sign of a zero y and no output. The packs interleave the chunks by 128-bit lane; one
// dword permutation puts them back in order. Bit-identical to gemm_epilogue_one.
TQ_TARGET_AVX512VNNI inline __attribute__((always_inline)) __m512i requant_pack(
    __m512i t0, __m512i t1, __m512i t2, __m512i t3, int16_t zp, bool relu, bool u8) {
  const __m512i zp16 = _mm512_set1_epi16(zp);
  __m512i w01 = _mm512_adds_epi16(_mm512_packs_epi32(t0, t1), zp16);
  __m512i w23 = _mm512_adds_epi16(_mm512_packs_epi32(t2, t3), zp16);
  if (relu) {
    w01 = _mm512_max_epi16(w01, zp16);
    w23 = _mm512_max_epi16(w23, zp16);
  }
  const __m512i perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_epi32(perm, u8 ? _mm512_packus_epi16(w01, w23)
                                           : _mm512_packs_epi16(w01, w23));
}

#endif  // TQ_X86

}  // namespace cpu
}  // namespace torchquant
