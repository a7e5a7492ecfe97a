// The VNNI depthwise int8 convolution, on 256-bit registers, compiled twice: for AVX-512 VNNI
// (conv_dw_avx512.cpp: AVX512VL, masked loads for partial channel blocks) and for AVX-VNNI
// (conv_dw_avxvnni.cpp: the VEX form of vpdpbusd, partial blocks through a buffer). The includer
// defines TQ_DW_TARGET, TQ_DW_DPBUSD, TQ_DW_AVX512 and TQ_DW_ENTRY. vpdpbusd multiplies
// four uint8 activations by four int8 weights and adds the four exact products to an int32 lane
// in one instruction (no int16 stage, so no saturation), against the AVX2 kernel's widening,
// interleaving, vpmaddwd and vpaddd per two taps. 512-bit registers are not used: on the Zen 4
// class EPYC this library is tuned on, the byte interleaves below run at half rate on them
// (a 512-bit version of the AVX2 kernel took 1.5x its time), while 256-bit EVEX code runs at
// full rate and has 32 registers.
//
// Layout: a 32-channel block of one output pixel is four int32 accumulators. The four bytes of
// a lane are not four taps along W (those would need a byte transpose per output pixel) but one
// column of up to four kernel rows: V[iw] = (x[row 0][iw], x[row 1][iw], x[row 2][iw], x[row 3][iw])
// per channel, built once per input column (3 loads, 8 unpacks for 32 channels) and read by every
// output pixel whose kernel covers that column (KW of them at stride 1). An output pixel is then
// KW x 4 vpdpbusd per group of four kernel rows (a 3x3 kernel: one group, 12 vpdpbusd with the
// fourth row's weight 0). The unpacks leave the channels of accumulator q in lanes
// {4q..4q+3, 16+4q..16+4q+3}; weights and per-channel constants are packed in that order, and the
// final packs (packs_epi32 of q = 0, 1 and of q = 2, 3, then packus_epi16) put the 32 output bytes
// back in channel order with no permute.
//
// Zero points: the activation zero point's term is folded into the accumulators' initial value,
// -a_zp * col_sums[c] (the scalar's gemm_correct, wrapping alike), so the loop has none. Padded
// positions read the zero point (a zero-point row above / below the input, zero-point columns
// left / right). int8 activations are made uint8 by flipping the top bit (x + 128), which adds
// 128 * sum_k w[k, c] to the sum: taken off in the initial value too.
//
// The epilogue is the float sequence of gemm_epilogue_one (docs/quantization.md): the same float32
// operations in the same order, so the outputs are bit-identical to the scalar variant.
#pragma once
// (included by conv_dw_avx512.cpp and conv_dw_avxvnni.cpp only, inside their TQ_X86 part)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/conv_kernels.h"
#include "cpu/isa.h"
#include "cpu/scratch.h"

namespace torchquant {
namespace cpu {

namespace {

// The masked loads and stores of a partial channel block: AVX-512's masked instructions, or on
// AVX-VNNI (no byte masks) a copy through a zeroed 32-byte buffer. Masks are the low n bits.
#if TQ_DW_AVX512
using DwMask = __mmask32;
TQ_DW_TARGET inline __m256i dw_maskz_load8(DwMask m, const void* p) { return _mm256_maskz_loadu_epi8(m, p); }
TQ_DW_TARGET inline void dw_mask_store8(void* p, DwMask m, __m256i v) { _mm256_mask_storeu_epi8(p, m, v); }
TQ_DW_TARGET inline __m128i dw_maskz_load32(int64_t n, const int32_t* p) {
  return _mm_maskz_loadu_epi32(static_cast<__mmask8>((1u << n) - 1), p);
}
#else
using DwMask = uint32_t;
// Whole dwords (a channel count that is a multiple of 4, as most are) by vpmaskmovd, which
// touches no masked lane; else bytes through the buffer.
TQ_DW_TARGET inline __m256i dw_dword_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n >> 2), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
TQ_DW_TARGET inline __m256i dw_maskz_load8(DwMask m, const void* p) {
  if (m == ~DwMask{0}) return _mm256_loadu_si256(static_cast<const __m256i*>(p));
  const int n = __builtin_popcount(m);
  if ((n & 3) == 0) return _mm256_maskload_epi32(static_cast<const int*>(p), dw_dword_mask(n));
  alignas(32) uint8_t buf[32] = {};
  std::memcpy(buf, p, static_cast<size_t>(n));
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(buf));
}
TQ_DW_TARGET inline void dw_mask_store8(void* p, DwMask m, __m256i v) {
  const int n = __builtin_popcount(m);
  if ((n & 3) == 0) {
    _mm256_maskstore_epi32(static_cast<int*>(p), dw_dword_mask(n), v);
    return;
  }
  alignas(32) uint8_t buf[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(buf), v);
  std::memcpy(p, buf, static_cast<size_t>(n));
}
TQ_DW_TARGET inline __m128i dw_maskz_load32(int64_t n, const int32_t* p) {
  const __m128i lane = _mm_setr_epi32(0, 1, 2, 3);
  return _mm_maskload_epi32(p, _mm_cmpgt_epi32(_mm_set1_epi32(static_cast<int>(n)), lane));
}
#endif

constexpr int64_t kBlock = 32;  // channels per block
// Bytes of the column buffer per group of four kernel rows. A pass covers the output columns
// whose input columns fill it, for every channel block in turn: the pass's inputs (3 rows x 34
// columns x C bytes for a 3x3 kernel) stay in L1 from one block to the next, and the buffer
// with them. Passes over whole rows per block (16 KiB of buffer) left a row of 96 channels at
// 112 pixels to be fetched from L2 three times: 1.1x slower there.
constexpr int64_t kColBytes = 4 << 10;

// Channel (within its block) of dword lane j of accumulator q: what the unpacks produce.
inline int64_t lane_channel(int64_t q, int64_t j) { return (j >> 2) * 16 + 4 * q + (j & 3); }

// The per-call packing: weights [blocks][groups][KW][4][8 lanes][4 rows] and per-lane constants
// [blocks][4][8] (initial accumulator, a_scale * w_scale, bias), in lane order, zero past C.
struct Packed {
  const int8_t* w;
  const int32_t* init;
  const float* s;
  const float* bias;
  int64_t groups;
};

// The four V vectors of 32 channels of four rows (see the top).
TQ_DW_TARGET inline void interleave4(__m256i x0, __m256i x1, __m256i x2, __m256i x3, __m256i* v) {
  const __m256i l01 = _mm256_unpacklo_epi8(x0, x1), h01 = _mm256_unpackhi_epi8(x0, x1);
  const __m256i l23 = _mm256_unpacklo_epi8(x2, x3), h23 = _mm256_unpackhi_epi8(x2, x3);
  v[0] = _mm256_unpacklo_epi16(l01, l23);
  v[1] = _mm256_unpackhi_epi16(l01, l23);
  v[2] = _mm256_unpacklo_epi16(h01, h23);
  v[3] = _mm256_unpackhi_epi16(h01, h23);
}

// 8 values of accumulator q's lanes from a per-channel array (channels c + 4q.. and
// c + 16 + 4q..), 0 past C.
TQ_DW_TARGET inline __m128i four(const int32_t* a, int64_t c0, int64_t C) {
  const int64_t n = std::clamp<int64_t>(C - c0, 0, 4);
  return dw_maskz_load32(n, a + std::min(c0, C));
}

TQ_DW_TARGET inline __m256i lanes(const int32_t* a, int64_t c, int64_t q, int64_t C) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(four(a, c + 4 * q, C)), four(a, c + 16 + 4 * q, C), 1);
}

// n 32-byte vectors of per-thread scratch, 32-byte aligned (std::vector<__m256i> would drop
// the type's alignment attribute).
inline __m256i* vec_scratch(std::vector<uint8_t>& v, int64_t n) {
  uint8_t* p = scratch(v, static_cast<size_t>(n * 32 + 32));
  return reinterpret_cast<__m256i*>((reinterpret_cast<uintptr_t>(p) + 31) & ~uintptr_t{31});
}

// Vector code, as it runs once per call and thread: a scalar loop over C x taps cost as much as
// a whole late layer at batch 1.
TQ_DW_TARGET Packed pack(const DwProblem& p) {
  thread_local std::vector<uint8_t> wb, ib, sb, bb;
  const ConvGeometry& g = p.g;
  const int64_t C = g.C, KW = g.k[2], R = g.k[0] * g.k[1];
  const int64_t G = (R + 3) / 4, blocks = (C + kBlock - 1) / kBlock;
  __m256i* w = vec_scratch(wb, blocks * G * KW * 4);
  __m256i* init = vec_scratch(ib, blocks * 4);
  __m256i* s = vec_scratch(sb, blocks * 4);
  __m256i* b = vec_scratch(bb, blocks * 4);
  const __m256i ones = _mm256_set1_epi8(1), zero = _mm256_setzero_si256();
  const __m256i azp = _mm256_set1_epi32(p.e.a_zp);
  const __m256 as = _mm256_set1_ps(p.e.a_scale);
  for (int64_t cb = 0; cb < blocks; ++cb) {
    const int64_t c = cb * kBlock, nv = std::min(kBlock, C - c);
    const DwMask m = static_cast<DwMask>((uint64_t{1} << nv) - 1);
    __m256i sum[4] = {zero, zero, zero, zero};
    for (int64_t gi = 0; gi < G; ++gi) {
      for (int64_t kw = 0; kw < KW; ++kw) {
        __m256i x[4];
        for (int64_t slot = 0; slot < 4; ++slot) {
          const int64_t ri = gi * 4 + slot;
          x[slot] = ri < R ? dw_maskz_load8(m, p.w + (ri * KW + kw) * C + c) : zero;
        }
        __m256i* v = w + ((cb * G + gi) * KW + kw) * 4;
        interleave4(x[0], x[1], x[2], x[3], v);
        for (int q = 0; q < 4; ++q) sum[q] = TQ_DW_DPBUSD(sum[q], ones, v[q]);
      }
    }
    for (int64_t q = 0; q < 4; ++q) {
      // -a_zp * col_sums (wrapping as gemm_correct), and for int8 input the 128 * sum_k w that
      // the flipped top bit adds.
      __m256i v = _mm256_sub_epi32(zero, _mm256_mullo_epi32(azp, lanes(p.e.col_sums, c, q, C)));
      if (!p.e.a_unsigned) v = _mm256_sub_epi32(v, _mm256_slli_epi32(sum[q], 7));
      init[cb * 4 + q] = v;
      s[cb * 4 + q] = _mm256_castps_si256(
          _mm256_mul_ps(as, _mm256_castsi256_ps(lanes(reinterpret_cast<const int32_t*>(p.e.w_scale), c, q, C))));
      b[cb * 4 + q] = p.e.bias != nullptr ? lanes(reinterpret_cast<const int32_t*>(p.e.bias), c, q, C) : zero;
    }
  }
  return {reinterpret_cast<const int8_t*>(w), reinterpret_cast<const int32_t*>(init),
          reinterpret_cast<const float*>(s), reinterpret_cast<const float*>(b), G};
}

// Epilogue modes, as in the AVX2 kernel: kGeneric follows every field of the problem at run
// time; the others are requantized outputs with nan_free set, compiled apart.
enum Mode : int { kGeneric = 0, kS8 = 1, kS8Relu = 2, kU8 = 3, kU8Relu = 4 };

template <bool U>
TQ_DW_TARGET inline __m256i load_x(const uint8_t* p, DwMask m) {
  const __m256i v = dw_maskz_load8(m, p);
  return U ? v : _mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(0x80)));
}

// Columns [i0, i1) of the input rows rp[0..Rg) (channels c.., mask m), as V vectors at
// v[(i - i0) * 4 + q]; columns outside [0, W) hold the zero point. Rows past Rg are 0 (their
// weights are 0). Also prefetches the same columns of pn rows from pf on, prow bytes apart: the
// rows the next output row adds.
template <bool U, int Rg>
TQ_DW_TARGET void build_cols(const uint8_t* const* rp, int64_t C, int64_t W, int64_t c, DwMask m,
                                     int64_t i0, int64_t i1, __m256i padv, __m256i* v, uintptr_t pf,
                                     int64_t pn, int64_t prow) {
  const int64_t a = std::clamp<int64_t>(0, i0, i1), b = std::clamp<int64_t>(W, a, i1);
  for (int64_t i = i0; i < a; ++i, v += 4) v[0] = v[1] = v[2] = v[3] = padv;
  const __m256i z = _mm256_setzero_si256();
  const uint8_t* r0 = rp[0];
  const uint8_t* r1 = Rg > 1 ? rp[1] : r0;
  const uint8_t* r2 = Rg > 2 ? rp[2] : r0;
  const uint8_t* r3 = Rg > 3 ? rp[3] : r0;
  for (int64_t i = a; i < b; ++i, v += 4) {
    const int64_t o = i * C + c;
    for (int64_t k = 0; k < pn; ++k) {
      _mm_prefetch(reinterpret_cast<const char*>(pf + static_cast<uintptr_t>(k * prow + o)), _MM_HINT_T0);
    }
    interleave4(load_x<U>(r0 + o, m), Rg > 1 ? load_x<U>(r1 + o, m) : z, Rg > 2 ? load_x<U>(r2 + o, m) : z,
                Rg > 3 ? load_x<U>(r3 + o, m) : z, v);
  }
  for (int64_t i = b; i < i1; ++i, v += 4) v[0] = v[1] = v[2] = v[3] = padv;
}

struct OutConsts {
  __m256 inv, ozp, lo, hi;
  __m256i zp16;
};

// Requantized epilogue of a 32-channel block, nan_free: the AVX2 kernel's epilogue16_q (the
// reasoning on the integer clamp and the ReLU fold is there), with the zero-point correction
// already in the accumulators.
template <bool U8, bool Relu>
TQ_DW_TARGET inline void epilogue_q(const __m256i* acc, const __m256* s, const __m256* b,
                                            const OutConsts& o, uint8_t* out, DwMask m, bool full) {
  const __m256 big = _mm256_set1_ps(1073741824.0f);
  __m256i t[4];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    __m256 y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[q]), s[q]), b[q]);
    // vcvtps2dq rounds in the current rounding mode, as quantize_val's nearbyintf does: no
    // separate vroundps (4 of the ~50 vector operations of a block's output pixel).
    t[q] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_mul_ps(y, o.inv), big));
  }
  __m256i w01 = _mm256_adds_epi16(_mm256_packs_epi32(t[0], t[1]), o.zp16);
  __m256i w23 = _mm256_adds_epi16(_mm256_packs_epi32(t[2], t[3]), o.zp16);
  if (Relu) {
    w01 = _mm256_max_epi16(w01, o.zp16);
    w23 = _mm256_max_epi16(w23, o.zp16);
  }
  const __m256i bytes = U8 ? _mm256_packus_epi16(w01, w23) : _mm256_packs_epi16(w01, w23);
  if (full) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), bytes);
  } else {
    dw_mask_store8(out, m, bytes);
  }
}

// Lane order -> channel order: accumulator q holds channels 4q.. in its low half and 16 + 4q..
// in its high half.
TQ_DW_TARGET inline void order_i(const __m256i* v, __m256i* d) {
  d[0] = _mm256_permute2x128_si256(v[0], v[1], 0x20);
  d[1] = _mm256_permute2x128_si256(v[2], v[3], 0x20);
  d[2] = _mm256_permute2x128_si256(v[0], v[1], 0x31);
  d[3] = _mm256_permute2x128_si256(v[2], v[3], 0x31);
}

// Any output kind, NaN-safe: gemm_dequant and quantize_val per lane as the AVX2 kernel's
// dequant8 / quant8. nvalid channels of the block are written.
TQ_DW_TARGET void epilogue_generic(const GemmProblem& e, const __m256i* acc, const __m256* s,
                                           const __m256* b, const OutConsts& o, void* out, int64_t nvalid) {
  alignas(32) int32_t tmp[kBlock];
  __m256i d[4];
  if (e.out_kind == GemmOut::Int32) {
    order_i(acc, d);
  } else {
    __m256 y[4];
    for (int q = 0; q < 4; ++q) {
      y[q] = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[q]), s[q]);
      if (e.bias != nullptr) y[q] = _mm256_add_ps(y[q], b[q]);
      if (e.relu) y[q] = _mm256_max_ps(_mm256_setzero_ps(), y[q]);
    }
    if (e.out_kind == GemmOut::Float) {
      __m256i yi[4];
      for (int q = 0; q < 4; ++q) yi[q] = _mm256_castps_si256(y[q]);
      order_i(yi, d);
    } else {
      __m256i t[4];
      for (int q = 0; q < 4; ++q) {
        __m256 v = _mm256_add_ps(
            _mm256_round_ps(_mm256_mul_ps(y[q], o.inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), o.ozp);
        const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
        v = _mm256_blendv_ps(_mm256_min_ps(_mm256_max_ps(v, o.lo), o.hi), o.ozp, nan);
        t[q] = _mm256_cvtps_epi32(v);
      }
      // Values inside the 8-bit type: the packs are exact and leave channel order (see the top).
      const __m256i w01 = _mm256_packs_epi32(t[0], t[1]), w23 = _mm256_packs_epi32(t[2], t[3]);
      const __m256i bytes = e.out_kind == GemmOut::QUInt8 ? _mm256_packus_epi16(w01, w23)
                                                           : _mm256_packs_epi16(w01, w23);
      _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), bytes);
      std::memcpy(out, tmp, static_cast<size_t>(nvalid));
      return;
    }
  }
  if (nvalid == kBlock) {
    for (int q = 0; q < 4; ++q) _mm256_storeu_si256(static_cast<__m256i*>(out) + q, d[q]);
    return;
  }
  for (int q = 0; q < 4; ++q) _mm256_store_si256(reinterpret_cast<__m256i*>(tmp) + q, d[q]);
  std::memcpy(out, tmp, static_cast<size_t>(nvalid) * 4);
}

// Output rows [r0, r1). KWT: the kernel width when fixed at compile time (3, with one group of
// rows: the weights stay in registers), else 0.
template <bool U, int Md, int KWT>
TQ_DW_TARGET void dw_rows(const DwProblem& p, const Packed& pk, const uint8_t* zprow, int64_t r0,
                                  int64_t r1) {
  const ConvGeometry& g = p.g;
  const int64_t C = g.C, OW = g.out[2], W = g.in[2], KH = g.k[1];
  const int64_t KW = KWT != 0 ? KWT : g.k[2];
  const int64_t sw = g.stride[2], pw = g.pad[2], dw = g.dil[2];
  const int64_t R = g.k[0] * KH, G = KWT != 0 ? 1 : pk.groups;
  const int64_t blocks = (C + kBlock - 1) / kBlock, tail = C - (blocks - 1) * kBlock;
  const int64_t ob = gemm_out_bytes(p.e.out_kind);
  const int64_t span = (KW - 1) * dw + 1;
  // Output columns per pass: their input columns' V vectors fill at most kColBytes per group.
  const int64_t max_cols = std::max(span, kColBytes / (G * 128));
  const int64_t chunk = std::min(OW, (max_cols - span) / sw + 1);
  thread_local std::vector<uint8_t> vb;
  __m256i* vbuf = vec_scratch(vb, G * ((chunk - 1) * sw + span) * 4);
  const uint8_t zb = static_cast<uint8_t>(p.e.a_zp);
  const __m256i padv = _mm256_set1_epi8(static_cast<char>(U ? zb : zb ^ 0x80));
  OutConsts oc;
  {
    const bool u8 = p.e.out_kind == GemmOut::QUInt8;
    oc.inv = _mm256_set1_ps(p.e.out_inv_scale);
    oc.ozp = _mm256_set1_ps(static_cast<float>(p.e.out_zp));
    oc.lo = _mm256_set1_ps(u8 ? 0.0f : -128.0f);
    oc.hi = _mm256_set1_ps(u8 ? 255.0f : 127.0f);
    oc.zp16 = _mm256_set1_epi16(static_cast<int16_t>(p.e.out_zp));
  }
  const uint8_t* x = static_cast<const uint8_t*>(p.x);
  thread_local std::vector<const uint8_t*> rpv;
  const uint8_t** rp = scratch(rpv, static_cast<size_t>(G * 4));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t oh = r % g.out[1], od = (r / g.out[1]) % g.out[0], n = r / (g.out[1] * g.out[0]);
    char* orow = static_cast<char*>(p.out_base) + r * OW * C * ob;
    for (int64_t ri = 0; ri < G * 4; ++ri) {
      rp[ri] = zprow;
      if (ri >= R) continue;
      const int64_t id = od * g.stride[0] - g.pad[0] + (ri / KH) * g.dil[0];
      const int64_t ih = oh * g.stride[1] - g.pad[1] + (ri % KH) * g.dil[1];
      if (id >= 0 && id < g.in[0] && ih >= 0 && ih < g.in[1]) {
        rp[ri] = x + ((n * g.in[0] + id) * g.in[1] + ih) * W * C;
      }
    }
    // Prefetch: the input rows this output row's successor reads and this one does not (2-d
    // kernels, rows inside the input: a prefetch past it is dropped). The hardware prefetchers
    // left build_cols waiting on its loads (2/3 of its samples on them at 96 channels, 112
    // pixels, stride 2, batch 8: 9.6 MB of input).
    uintptr_t pf = 0;
    int64_t pn = 0;
    const int64_t prow = W * C;
    if (g.k[0] == 1 && r + 1 < r1 && rp[R - 1] != zprow) {
      pf = reinterpret_cast<uintptr_t>(rp[R - 1]) + static_cast<uintptr_t>(prow);
      pn = std::min(g.stride[1], g.in[1] - 1 - (oh * g.stride[1] - g.pad[1] + (KH - 1) * g.dil[1]));
      if (oh + 1 == g.out[1]) pn = 0;
    }
    for (int64_t o0 = 0; o0 < OW; o0 += chunk) {
      const int64_t o1 = std::min(OW, o0 + chunk);
      const int64_t i0 = o0 * sw - pw, ncols = (o1 - 1 - o0) * sw + span;
      for (int64_t cb = 0; cb < blocks; ++cb) {
        const int64_t c = cb * kBlock;
        const bool full = cb + 1 < blocks || tail == kBlock;
        const DwMask m = full ? ~DwMask{0} : static_cast<DwMask>((uint64_t{1} << tail) - 1);
        __m256i init[4];
        __m256 s[4], b[4];
        for (int q = 0; q < 4; ++q) {
          init[q] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pk.init + c) + q);
          s[q] = _mm256_loadu_ps(pk.s + c + 8 * q);
          b[q] = _mm256_loadu_ps(pk.bias + c + 8 * q);
        }
        const __m256i* wblk = reinterpret_cast<const __m256i*>(pk.w) + cb * G * KW * 4;
        __m256i wr[KWT != 0 ? KWT * 4 : 1];
        if constexpr (KWT != 0) {
          for (int i = 0; i < KWT * 4; ++i) wr[i] = _mm256_loadu_si256(wblk + i);
        }
        for (int64_t gi = 0; gi < G; ++gi) {
          const uint8_t* const* rg = rp + gi * 4;
          __m256i* v = vbuf + gi * ncols * 4;
          const int64_t rows = std::min<int64_t>(4, R - gi * 4);
          switch (rows) {
            case 1: build_cols<U, 1>(rg, C, W, c, m, i0, i0 + ncols, padv, v, pf, pn, prow); break;
            case 2: build_cols<U, 2>(rg, C, W, c, m, i0, i0 + ncols, padv, v, pf, pn, prow); break;
            case 3: build_cols<U, 3>(rg, C, W, c, m, i0, i0 + ncols, padv, v, pf, pn, prow); break;
            default: build_cols<U, 4>(rg, C, W, c, m, i0, i0 + ncols, padv, v, pf, pn, prow); break;
          }
        }
        for (int64_t ow = o0; ow < o1; ++ow) {
          __m256i acc[4] = {init[0], init[1], init[2], init[3]};
          const __m256i* v0 = vbuf + (ow - o0) * sw * 4;
          if constexpr (KWT != 0) {
#pragma GCC unroll 3
            for (int kw = 0; kw < KWT; ++kw) {
              const __m256i* v = v0 + kw * dw * 4;
#pragma GCC unroll 4
              for (int q = 0; q < 4; ++q) acc[q] = TQ_DW_DPBUSD(acc[q], v[q], wr[kw * 4 + q]);
            }
          } else {
            for (int64_t gi = 0; gi < G; ++gi) {
              const __m256i* vg = v0 + gi * ncols * 4;
              const __m256i* wg = wblk + gi * KW * 4;
              for (int64_t kw = 0; kw < KW; ++kw) {
                const __m256i* v = vg + kw * dw * 4;
#pragma GCC unroll 4
                for (int q = 0; q < 4; ++q) {
                  acc[q] = TQ_DW_DPBUSD(acc[q], v[q], _mm256_loadu_si256(wg + kw * 4 + q));
                }
              }
            }
          }
          if constexpr (Md == kGeneric) {
            epilogue_generic(p.e, acc, s, b, oc, orow + (ow * C + c) * ob, full ? kBlock : tail);
          } else {
            epilogue_q<Md >= kU8, Md == kS8Relu || Md == kU8Relu>(
                acc, s, b, oc, reinterpret_cast<uint8_t*>(orow) + ow * C + c, m, full);
          }
        }
      }
    }
  }
}

}  // namespace

void TQ_DW_ENTRY(const DwProblem& p, int64_t r0, int64_t r1) {
  const ConvGeometry& g = p.g;
  const Packed pk = pack(p);
  // The row that padded kernel rows read: W * C zero-point bytes (as stored: int8 zero points
  // are flipped with the rest on load).
  thread_local std::vector<uint8_t> zr;
  const uint8_t* zprow = nullptr;
  if (g.pad[0] != 0 || g.pad[1] != 0) {  // else every kernel row lies inside the input
    const size_t zn = static_cast<size_t>(g.in[2] * g.C);
    uint8_t* z = scratch(zr, zn);
    std::memset(z, static_cast<uint8_t>(p.e.a_zp), zn);
    zprow = z;
  }
  const GemmOut k = p.e.out_kind;
  const int md = !p.e.nan_free || (k != GemmOut::QInt8 && k != GemmOut::QUInt8)
                     ? kGeneric
                     : (k == GemmOut::QUInt8 ? kU8 : kS8) + (p.e.relu ? 1 : 0);
  const bool k3 = pk.groups == 1 && g.k[2] == 3;
  auto run = [&](auto u, auto kw) {
    constexpr bool U = decltype(u)::value;
    constexpr int KWT = decltype(kw)::value;
    switch (md) {
      case kS8: return dw_rows<U, kS8, KWT>(p, pk, zprow, r0, r1);
      case kS8Relu: return dw_rows<U, kS8Relu, KWT>(p, pk, zprow, r0, r1);
      case kU8: return dw_rows<U, kU8, KWT>(p, pk, zprow, r0, r1);
      case kU8Relu: return dw_rows<U, kU8Relu, KWT>(p, pk, zprow, r0, r1);
      default: return dw_rows<U, kGeneric, KWT>(p, pk, zprow, r0, r1);
    }
  };
  using K3 = std::integral_constant<int, 3>;
  using K0 = std::integral_constant<int, 0>;
  if (p.e.a_unsigned) {
    k3 ? run(std::true_type{}, K3{}) : run(std::true_type{}, K0{});
  } else {
    k3 ? run(std::false_type{}, K3{}) : run(std::false_type{}, K0{});
  }
}

}  // namespace cpu
}  // namespace torchquant
