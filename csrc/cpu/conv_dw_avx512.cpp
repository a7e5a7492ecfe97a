// AVX-512 depthwise int8 convolution, 32 channels at a time (a lane mask for the last partial
// block). Memory-bound: per output pixel, taps x C activation bytes and taps multiply-adds per
// channel. Products of an 8-bit activation and an int8 weight are exact in int16
// (|x * w| <= 32640) and widen into int32 lanes. Per output row and channel block, the taps'
// weights are widened once and the epilogue's per-channel constants computed once; pixels whose
// receptive field lies inside the input (all but the borders) take a loop without bounds
// checks, border pixels read the zero point at padded taps. The epilogue repeats
// gemm_epilogue_one's float32 operations in the same order (no FMA), so the outputs are
// bit-identical to the scalar variant.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "cpu/conv_kernels.h"
#include "cpu/isa.h"
#include "cpu/scratch.h"

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own undefined-vector helpers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

// The epilogue's per-channel constants of 16 channels.
struct Consts16 {
  __m512i zp_cs;  // a_zp * col_sums[c] (int32, wrapping as the scalar gemm_correct)
  __m512 s;       // a_scale * w_scale[c]
  __m512 bias;
  __mmask16 m;
};

TQ_TARGET_AVX512VNNI inline Consts16 consts16(const GemmProblem& e, int64_t c, __mmask16 m) {
  Consts16 k;
  k.zp_cs = _mm512_mullo_epi32(_mm512_set1_epi32(e.a_zp), _mm512_maskz_loadu_epi32(m, e.col_sums + c));
  k.s = _mm512_mul_ps(_mm512_set1_ps(e.a_scale), _mm512_maskz_loadu_ps(m, e.w_scale + c));
  k.bias = e.bias != nullptr ? _mm512_maskz_loadu_ps(m, e.bias + c) : _mm512_setzero_ps();
  k.m = m;
  return k;
}

// 16 output channels [c, c + 16) of one pixel (lanes outside k.m untouched).
TQ_TARGET_AVX512VNNI inline void epilogue16(const GemmProblem& e, const Consts16& k, __m512i acc,
                                            int64_t c, void* out) {
  const __m512i corr = _mm512_sub_epi32(acc, k.zp_cs);
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), k.s);
  if (e.bias != nullptr) y = _mm512_add_ps(y, k.bias);
  if (e.relu) y = _mm512_max_ps(_mm512_setzero_ps(), y);  // 0 > y ? 0 : y: NaN and -0 pass
  if (e.out_kind == GemmOut::Float) {
    _mm512_mask_storeu_ps(static_cast<float*>(out) + c, k.m, y);
    return;
  }
  const bool u8 = e.out_kind == GemmOut::QUInt8;
  const __m512 inv = _mm512_set1_ps(e.out_inv_scale), ozp = _mm512_set1_ps(static_cast<float>(e.out_zp));
  const __m512 lo = _mm512_set1_ps(u8 ? 0.0f : -128.0f), hi = _mm512_set1_ps(u8 ? 255.0f : 127.0f);
  __m512 t = _mm512_add_ps(
      _mm512_roundscale_ps(_mm512_mul_ps(y, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), ozp);
  const __mmask16 nan = _mm512_cmp_ps_mask(t, t, _CMP_UNORD_Q);
  t = _mm512_mask_blend_ps(nan, _mm512_min_ps(_mm512_max_ps(t, lo), hi), ozp);
  // Integers inside the 8-bit type: the conversion and the narrowing are exact.
  const __m512i q = _mm512_cvtps_epi32(t);
  if (u8) {
    _mm512_mask_cvtusepi32_storeu_epi8(static_cast<uint8_t*>(out) + c, k.m, q);
  } else {
    _mm512_mask_cvtsepi32_storeu_epi8(static_cast<int8_t*>(out) + c, k.m, q);
  }
}

template <bool U>
TQ_TARGET_AVX512VNNI inline __m512i widen(const void* p, __mmask32 m) {
  const __m256i v = _mm256_maskz_loadu_epi8(m, p);
  return U ? _mm512_cvtepu8_epi16(v) : _mm512_cvtepi8_epi16(v);
}

TQ_TARGET_AVX512VNNI inline void mac(__m512i xv, __m512i wv, __m512i* a0, __m512i* a1) {
  const __m512i prod = _mm512_mullo_epi16(xv, wv);
  *a0 = _mm512_add_epi32(*a0, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(prod)));
  *a1 = _mm512_add_epi32(*a1, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(prod, 1)));
}

template <bool U>
TQ_TARGET_AVX512VNNI void dw_rows(const DwProblem& p, int64_t r0, int64_t r1) {
  const ConvGeometry& g = p.g;
  const int64_t C = g.C, OW = g.out[2], W = g.in[2], KW = g.k[2], taps = g.taps();
  const int64_t sw = g.stride[2], pw = g.pad[2], dw = g.dil[2];
  const int64_t ob = gemm_out_bytes(p.e.out_kind);
  // Output columns whose taps all lie inside the row: [ow_lo, ow_hi).
  const int64_t ow_lo = std::min(OW, (pw + sw - 1) / sw);
  const int64_t last = W - 1 + pw - (KW - 1) * dw;
  const int64_t ow_hi = last < 0 ? 0 : std::min(OW, last / sw + 1);
  thread_local std::vector<int16_t> wv;       // the taps' weights of a channel block, widened
  thread_local std::vector<int64_t> tap_off;  // input offset of tap t from the output column's origin
  thread_local std::vector<int64_t> tap_kw;   // column offset of tap t: kw * dilation - padding
  thread_local std::vector<char> tap_in;      // tap t's input row (d, h) lies inside the input
  scratch(wv, static_cast<size_t>(taps * 32));
  scratch(tap_in, static_cast<size_t>(taps));
  scratch(tap_off, static_cast<size_t>(taps));
  scratch(tap_kw, static_cast<size_t>(taps));
  const __m512i vzp = _mm512_set1_epi16(static_cast<int16_t>(p.e.a_zp));
  const uint8_t* x = static_cast<const uint8_t*>(p.x);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t oh = r % g.out[1], od = (r / g.out[1]) % g.out[0], n = r / (g.out[1] * g.out[0]);
    char* orow = static_cast<char*>(p.out_base) + r * OW * C * ob;
    bool rows_inside = true;
    int64_t t = 0;
    for (int64_t kd = 0; kd < g.k[0]; ++kd) {
      const int64_t id = od * g.stride[0] - g.pad[0] + kd * g.dil[0];
      for (int64_t kh = 0; kh < g.k[1]; ++kh) {
        const int64_t ih = oh * g.stride[1] - g.pad[1] + kh * g.dil[1];
        const bool in = id >= 0 && id < g.in[0] && ih >= 0 && ih < g.in[1];
        rows_inside = rows_inside && in;
        for (int64_t kw = 0; kw < KW; ++kw, ++t) {
          tap_kw[t] = kw * dw - pw;
          tap_in[t] = in;
          tap_off[t] = in ? (((n * g.in[0] + id) * g.in[1] + ih) * W + kw * dw - pw) * C : 0;
        }
      }
    }
    for (int64_t c = 0; c < C; c += 32) {
      const int64_t rem = C - c;
      const __mmask32 m = rem >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint32_t{1} << rem) - 1);
      for (int64_t k = 0; k < taps; ++k) _mm512_storeu_si512(wv.data() + k * 32, widen<false>(p.w + k * C + c, m));
      const Consts16 k0 = consts16(p.e, c, static_cast<__mmask16>(m));
      const Consts16 k1 = consts16(p.e, c + 16, static_cast<__mmask16>(m >> 16));
      for (int64_t ow = 0; ow < OW; ++ow) {
        __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
        const int64_t base = ow * sw * C + c;
        if (rows_inside && ow >= ow_lo && ow < ow_hi) {
          for (int64_t k = 0; k < taps; ++k) {
            mac(widen<U>(x + (tap_off[k] + base), m), _mm512_loadu_si512(wv.data() + k * 32), &a0, &a1);
          }
        } else {
          for (int64_t k = 0; k < taps; ++k) {
            const int64_t iw = ow * sw + tap_kw[k];
            const bool in = tap_in[k] && iw >= 0 && iw < W;
            mac(in ? widen<U>(x + (tap_off[k] + base), m) : vzp, _mm512_loadu_si512(wv.data() + k * 32), &a0, &a1);
          }
        }
        void* opix = orow + ow * C * ob;
        epilogue16(p.e, k0, a0, c, opix);
        if (rem > 16) epilogue16(p.e, k1, a1, c + 16, opix);
      }
    }
  }
}

}  // namespace

void conv_dw__avx512vnni(const DwProblem& p, int64_t r0, int64_t r1) {
  if (p.e.a_unsigned) {
    dw_rows<true>(p, r0, r1);
  } else {
    dw_rows<false>(p, r0, r1);
  }
}
#else
void conv_dw__avx512vnni(const DwProblem& p, int64_t r0, int64_t r1) { conv_dw__scalar(p, r0, r1); }
#endif

}  // namespace cpu
}  // namespace torchquant
