// AVX2 depthwise int8 convolution. Memory-bound: each output pixel reads taps x C activations
// and does taps multiply-adds per channel, so the loop is direct (no GEMM), vectorised across
// 16 channels at a time in channels-last layout. Activations and weights are widened to int16
// and two taps at a time go through vpmaddwd, which adds the two products of each channel into
// an int32 lane: exact, as |x * w| <= 255 * 128. Padded taps read the zero point.
// The epilogue is epilogue_row of gemm_avx2.cpp's sequence (the same float32 operations in the
// same order as gemm_epilogue_one), so the outputs are bit-identical to the scalar variant.
#include <immintrin.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/conv_kernels.h"
#include "cpu/epilogue_avx2.h"
#include "cpu/isa.h"
#include "cpu/scratch.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

// The epilogue's constants: per output (EpiConsts256, epilogue_avx2.h) and, per 8 channels,
// zp_cs / s / bias.
struct Consts8 {
  __m256i zp_cs;  // a_zp * col_sums[c] (int32, wrapping as the scalar gemm_correct)
  __m256 s;       // a_scale * w_scale[c]
  __m256 bias;
};

TQ_TARGET_AVX2 inline Consts8 consts8(const GemmProblem& e, int64_t c) {
  Consts8 k;
  k.zp_cs = _mm256_mullo_epi32(_mm256_set1_epi32(e.a_zp),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.col_sums + c)));
  k.s = _mm256_mul_ps(_mm256_set1_ps(e.a_scale), _mm256_loadu_ps(e.w_scale + c));
  k.bias = e.bias != nullptr ? _mm256_loadu_ps(e.bias + c) : _mm256_setzero_ps();
  return k;
}

// y of 8 channels: (float)corr * s, + bias, ReLU.
TQ_TARGET_AVX2 inline __m256 dequant8(const GemmProblem& e, const Consts8& k, __m256i acc) {
  return dequant_lanes(_mm256_sub_epi32(acc, k.zp_cs), k.s, e.bias != nullptr, k.bias, e.relu);
}

// 16 output channels [c, c + 16) of one pixel from their int32 accumulators.
TQ_TARGET_AVX2 inline void epilogue16(const GemmProblem& e, const EpiConsts256& o, const Consts8& k0,
                                      const Consts8& k1, __m256i a0, __m256i a1, int64_t c, void* out) {
  const __m256 y0 = dequant8(e, k0, a0), y1 = dequant8(e, k1, a1);
  if (e.out_kind == GemmOut::Float) {
    _mm256_storeu_ps(static_cast<float*>(out) + c, y0);
    _mm256_storeu_ps(static_cast<float*>(out) + c + 8, y1);
    return;
  }
  // Integers inside the 8-bit type: the packs are exact. packs_epi32 interleaves 128-bit
  // halves, so the 16-bit lanes come out as q0[0:4] q1[0:4] q0[4:8] q1[4:8].
  const __m256i w = _mm256_permute4x64_epi64(
      _mm256_packs_epi32(quant_lanes(y0, o, e.nan_free), quant_lanes(y1, o, e.nan_free)), 0xD8);
  const __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
  const __m128i bytes = e.out_kind == GemmOut::QUInt8 ? _mm_packus_epi16(lo, hi) : _mm_packs_epi16(lo, hi);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint8_t*>(out) + c), bytes);
}

// Epilogue modes: kGeneric follows every field of the problem at run time; the others are the
// requantized outputs with nan_free set (int8 / uint8, with or without ReLU), compiled apart so
// that the pixel loop carries no branches on the output kind.
enum Mode : int { kGeneric = 0, kS8 = 1, kS8Relu = 2, kU8 = 3, kU8Relu = 4 };

// The requantized epilogue of 16 channels when no NaN can occur (nan_free), in the integer
// domain after the rounding: t = round(y * inv) (integer-valued, the float clamp at 2^30 keeps
// the conversion in range; -inf and below -2^31 convert to INT32_MIN), then int16 saturation,
// a saturating + zero point and the byte pack's saturation give clamp(t + zp, lo, hi) exactly
// as quantize_val does (whatever saturates at int16 lies far outside [lo, hi] either way). ReLU
// folds into the clamp: y < 0 gives t <= 0 and so max(t + zp, zp) = zp, the output of y = 0;
// y >= 0 leaves t + zp >= zp unchanged. A missing bias adds +0.0, which changes at most the sign
// of a zero y, and no output. Bit-identical to gemm_epilogue_one.
template <bool U8, bool Relu>
TQ_TARGET_AVX2 inline void epilogue16_q(const EpiConsts256& o, const Consts8& k0, const Consts8& k1,
                                        __m256i a0, __m256i a1, __m256i zp16, uint8_t* out) {
  const __m256 big = _mm256_set1_ps(1073741824.0f);
  __m256 y0 = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(a0, k0.zp_cs)), k0.s), k0.bias);
  __m256 y1 = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(a1, k1.zp_cs)), k1.s), k1.bias);
  y0 = _mm256_min_ps(_mm256_mul_ps(y0, o.inv), big);
  y1 = _mm256_min_ps(_mm256_mul_ps(y1, o.inv), big);
  const __m256i t0 = _mm256_cvtps_epi32(_mm256_round_ps(y0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  const __m256i t1 = _mm256_cvtps_epi32(_mm256_round_ps(y1, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  // packs_epi32 interleaves 128-bit halves: q0[0:4] q1[0:4] q0[4:8] q1[4:8], put back in order.
  __m256i w = _mm256_adds_epi16(_mm256_packs_epi32(t0, t1), zp16);
  if (Relu) w = _mm256_max_epi16(w, zp16);
  w = _mm256_permute4x64_epi64(w, 0xD8);
  const __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), U8 ? _mm_packus_epi16(lo, hi) : _mm_packs_epi16(lo, hi));
}

template <bool U>
TQ_TARGET_AVX2 inline __m256i widen(const void* p) {
  const __m128i v = _mm_loadu_si128(static_cast<const __m128i*>(p));
  return U ? _mm256_cvtepu8_epi16(v) : _mm256_cvtepi8_epi16(v);
}

// Output pixels per step of the interior loop.
constexpr int kPix = 4;

// NP output pixels of one row inside the input (all taps in range), 16 channels: NP independent
// accumulator chains side by side, which the core overlaps (a single pixel's taps, then its
// epilogue, are one long dependency chain; measured 1.3x on C = 144 at 56x56 with 4). xb: the
// first pixel's input at tap offset 0; pixel i reads xb + i * step + tap_off[t].
template <bool U, int NP, bool U8, bool RELU>
TQ_TARGET_AVX2 inline void dw_pixels(const uint8_t* xb, int64_t step, const int64_t* tap_off,
                                     const int16_t* wb, int64_t pairs, const EpiConsts256& oc,
                                     const Consts8& k0, const Consts8& k1, __m256i zp16, uint8_t* o,
                                     int64_t C) {
  __m256i lo[NP], hi[NP];
#pragma GCC unroll 4
  for (int i = 0; i < NP; ++i) lo[i] = hi[i] = _mm256_setzero_si256();
  for (int64_t q = 0; q < pairs; ++q) {
    const int64_t o0 = tap_off[2 * q], o1 = tap_off[2 * q + 1];
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + q * 32));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + q * 32 + 16));
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i) {
      const __m256i xa0 = widen<U>(xb + i * step + o0), xa1 = widen<U>(xb + i * step + o1);
      lo[i] = _mm256_add_epi32(lo[i], _mm256_madd_epi16(_mm256_unpacklo_epi16(xa0, xa1), w0));
      hi[i] = _mm256_add_epi32(hi[i], _mm256_madd_epi16(_mm256_unpackhi_epi16(xa0, xa1), w1));
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < NP; ++i) {
    epilogue16_q<U8, RELU>(oc, k0, k1, _mm256_permute2x128_si256(lo[i], hi[i], 0x20),
                           _mm256_permute2x128_si256(lo[i], hi[i], 0x31), zp16, o + i * C);
  }
}

template <bool U, int Md>
TQ_TARGET_AVX2 void dw_rows(const DwProblem& p, int64_t r0, int64_t r1) {
  const ConvGeometry& g = p.g;
  const int64_t C = g.C, OW = g.out[2], W = g.in[2], KW = g.k[2], taps = g.taps();
  const int64_t sw = g.stride[2], pw = g.pad[2], dw = g.dil[2];
  const int64_t ob = gemm_out_bytes(p.e.out_kind);
  const int64_t cv = C / 16 * 16;
  // Output columns whose taps all lie inside the row: [ow_lo, ow_hi).
  const int64_t ow_lo = std::min(OW, (pw + sw - 1) / sw);
  const int64_t last = W - 1 + pw - (KW - 1) * dw;
  const int64_t ow_hi = last < 0 ? 0 : std::min(OW, last / sw + 1);
  const int64_t pairs = (taps + 1) / 2;
  // Every channel block's weights, two taps interleaved, and its epilogue constants, made once
  // per call rather than once per output row: a 7 x 7 layer's row has 7 pixels to share them
  // (MobileNetV2's 960-channel layers at batch 8 spent more on this than on the taps).
  thread_local std::vector<int16_t> wv;       // [block][pair][32]
  thread_local std::vector<int64_t> tap_off;  // input offset of tap t from the output column's origin
  thread_local std::vector<int64_t> tap_kw;   // column offset of tap t: kw * dilation - padding
  thread_local std::vector<char> tap_in;      // tap t's input row (d, h) lies inside the input
  scratch(wv, static_cast<size_t>(std::max<int64_t>(cv / 16, 1) * pairs * 32));
  // the epilogue constants of each channel: a_zp * col_sums, a_scale * w_scale, bias (Consts8)
  thread_local std::vector<int32_t> k_zc;
  thread_local std::vector<float> k_s, k_b;
  scratch(k_zc, static_cast<size_t>(std::max<int64_t>(cv, 1)));
  scratch(k_s, static_cast<size_t>(std::max<int64_t>(cv, 1)));
  scratch(k_b, static_cast<size_t>(std::max<int64_t>(cv, 1)));
  for (int64_t c = 0; c < cv; c += 16) {
    int16_t* wb = wv.data() + c / 16 * pairs * 32;
    for (int64_t q = 0; q < pairs; ++q) {
      const __m256i w0 = widen<false>(p.w + 2 * q * C + c);
      const __m256i w1 = 2 * q + 1 < taps ? widen<false>(p.w + (2 * q + 1) * C + c) : _mm256_setzero_si256();
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(wb + q * 32), _mm256_unpacklo_epi16(w0, w1));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(wb + q * 32 + 16), _mm256_unpackhi_epi16(w0, w1));
    }
    for (int64_t h = 0; h < 16; h += 8) {
      const Consts8 k = consts8(p.e, c + h);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(k_zc.data() + c + h), k.zp_cs);
      _mm256_storeu_ps(k_s.data() + c + h, k.s);
      _mm256_storeu_ps(k_b.data() + c + h, k.bias);
    }
  }
  auto consts_at = [&](int64_t c) TQ_TARGET_AVX2 {
    return Consts8{_mm256_loadu_si256(reinterpret_cast<const __m256i*>(k_zc.data() + c)),
                   _mm256_loadu_ps(k_s.data() + c), _mm256_loadu_ps(k_b.data() + c)};
  };
  scratch(tap_off, static_cast<size_t>(pairs * 2));
  scratch(tap_kw, static_cast<size_t>(pairs * 2));
  scratch(tap_in, static_cast<size_t>(pairs * 2));
  const __m256i vzp = _mm256_set1_epi16(static_cast<int16_t>(p.e.a_zp));
  const EpiConsts256 oc = epi_consts256(p.e);
  const __m256i zp16 = _mm256_set1_epi16(static_cast<int16_t>(p.e.out_zp));
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
    if (taps % 2 != 0) {  // the odd tap out has a zero weight: it reads tap 0's input
      tap_kw[taps] = tap_kw[0];
      tap_in[taps] = tap_in[0];
      tap_off[taps] = tap_off[0];
    }
    for (int64_t c = 0; c < cv; c += 16) {
      const int16_t* wb = wv.data() + c / 16 * pairs * 32;
      const Consts8 k0 = consts_at(c), k1 = consts_at(c + 8);
      for (int64_t ow = 0; ow < OW; ++ow) {
        if constexpr (Md != kGeneric) {
          // Inside the input: kPix pixels at a time (dw_pixels), or the 1 to 3 left before the
          // right padding.
          if (rows_inside && ow >= ow_lo && ow < ow_hi) {
            constexpr bool u8 = Md >= kU8, relu = Md == kS8Relu || Md == kU8Relu;
            const int64_t np = std::min<int64_t>(kPix, ow_hi - ow);
            const uint8_t* xb = x + ow * sw * C + c;
            uint8_t* o = reinterpret_cast<uint8_t*>(orow) + ow * C + c;
            const int64_t* to = tap_off.data();
            if (np == 4) dw_pixels<U, 4, u8, relu>(xb, sw * C, to, wb, pairs, oc, k0, k1, zp16, o, C);
            else if (np == 3) dw_pixels<U, 3, u8, relu>(xb, sw * C, to, wb, pairs, oc, k0, k1, zp16, o, C);
            else if (np == 2) dw_pixels<U, 2, u8, relu>(xb, sw * C, to, wb, pairs, oc, k0, k1, zp16, o, C);
            else dw_pixels<U, 1, u8, relu>(xb, sw * C, to, wb, pairs, oc, k0, k1, zp16, o, C);
            ow += np - 1;
            continue;
          }
        }
        // Two taps per vpmaddwd: their int16 activations interleaved per channel meet the
        // weights interleaved the same way, and each int32 lane gets the two products' sum
        // (exact). unpacklo/hi work within 128-bit lanes: lo holds channels 0-3 and 8-11, hi
        // 4-7 and 12-15, put back in order once per pixel.
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
        const int64_t base = ow * sw * C + c;
        const bool inside = rows_inside && ow >= ow_lo && ow < ow_hi;
        for (int64_t q = 0; q < pairs; ++q) {
          const int64_t t0 = 2 * q, t1 = 2 * q + 1;
          __m256i x0, x1;
          if (inside) {
            x0 = widen<U>(x + (tap_off[t0] + base));
            x1 = widen<U>(x + (tap_off[t1] + base));
          } else {
            const int64_t iw0 = ow * sw + tap_kw[t0], iw1 = ow * sw + tap_kw[t1];
            x0 = tap_in[t0] && iw0 >= 0 && iw0 < W ? widen<U>(x + (tap_off[t0] + base)) : vzp;
            x1 = tap_in[t1] && iw1 >= 0 && iw1 < W ? widen<U>(x + (tap_off[t1] + base)) : vzp;
          }
          const __m256i* wq = reinterpret_cast<const __m256i*>(wb + q * 32);
          lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1), _mm256_loadu_si256(wq)));
          hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1), _mm256_loadu_si256(wq + 1)));
        }
        const __m256i a0 = _mm256_permute2x128_si256(lo, hi, 0x20);
        const __m256i a1 = _mm256_permute2x128_si256(lo, hi, 0x31);
        if constexpr (Md == kGeneric) {
          epilogue16(p.e, oc, k0, k1, a0, a1, c, orow + ow * C * ob);
        } else {
          epilogue16_q<Md >= kU8, Md == kS8Relu || Md == kU8Relu>(oc, k0, k1, a0, a1, zp16,
                                                                  reinterpret_cast<uint8_t*>(orow) + ow * C + c);
        }
      }
    }
    if (cv == C) continue;
    GemmProblem e = p.e;
    e.ldo = C;
    e.out = orow;
    for (int64_t ow = 0; ow < OW; ++ow) {
      for (int64_t c = cv; c < C; ++c) {
        int32_t acc = 0;
        for (int64_t k = 0; k < taps; ++k) {
          const int64_t iw = ow * sw + tap_kw[k];
          int32_t xv = p.e.a_zp;
          if (tap_in[k] && iw >= 0 && iw < W) {
            const uint8_t b = x[tap_off[k] + ow * sw * C + c];
            xv = U ? int32_t{b} : int32_t{static_cast<int8_t>(b)};
          }
          acc += xv * p.w[k * C + c];
        }
        gemm_epilogue_one(e, ow, c, gemm_correct(acc, p.e.a_zp, p.e.col_sums[c]), p.e.a_scale);
      }
    }
  }
}

}  // namespace

void conv_dw__avx2(const DwProblem& p, int64_t r0, int64_t r1) {
  const GemmOut k = p.e.out_kind;
  const int md = !p.e.nan_free || (k != GemmOut::QInt8 && k != GemmOut::QUInt8)
                     ? kGeneric
                     : (k == GemmOut::QUInt8 ? kU8 : kS8) + (p.e.relu ? 1 : 0);
  auto run = [&](auto u) {
    constexpr bool U = decltype(u)::value;
    switch (md) {
      case kS8: return dw_rows<U, kS8>(p, r0, r1);
      case kS8Relu: return dw_rows<U, kS8Relu>(p, r0, r1);
      case kU8: return dw_rows<U, kU8>(p, r0, r1);
      case kU8Relu: return dw_rows<U, kU8Relu>(p, r0, r1);
      default: return dw_rows<U, kGeneric>(p, r0, r1);
    }
  };
  if (p.e.a_unsigned) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}
#else
void conv_dw__avx2(const DwProblem& p, int64_t r0, int64_t r1) { conv_dw__scalar(p, r0, r1); }
#endif

}  // namespace cpu
}  // namespace torchquant
