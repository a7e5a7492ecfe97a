// AVX2 elementwise kernels. The same float32 steps as elementwise_scalar.cpp, one IEEE operation
// each (no FMA intrinsic; the build passes -ffp-contract=off), so the results are bit-identical:
// - (a - a_zp) and (a - a_zp) * (b - b_zp) are exact int32 values (|.| <= 65025), converted to
//   float exactly;
// - relu: _mm256_max_ps(y, 0) differs from the oracle's (y < 0 ? 0 : y) only for NaN and -0,
//   which both quantize to the zero point anyway;
// - the quantize step is quant_math.h's formula: round half to even, NaN lanes replaced by the
//   zero point, clamp while still float, then exact conversions and non-saturating packs.
// These ops are memory-bound: 32 elements per iteration, then 8, tails through the scalar oracle.
#include <immintrin.h>

#include <cmath>
#include <initializer_list>

#include "cpu/elementwise_kernels.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

struct Vp {
  __m256 a_scale, b_scale, m, c, inv, zp, lo, hi, zero;
  __m256i a_zp, b_zp;
};

TQ_TARGET_AVX2 inline Vp vparams(const EwParams& p) {
  Vp v;
  v.a_scale = _mm256_set1_ps(p.a_scale);
  v.b_scale = _mm256_set1_ps(p.b_scale);
  v.m = _mm256_set1_ps(p.m);
  v.c = _mm256_set1_ps(p.c);
  v.inv = _mm256_set1_ps(p.inv_out);
  v.zp = _mm256_set1_ps(static_cast<float>(p.out_zp));
  v.lo = _mm256_set1_ps(static_cast<float>(p.qmin));
  v.hi = _mm256_set1_ps(static_cast<float>(p.qmax));
  v.zero = _mm256_setzero_ps();
  v.a_zp = _mm256_set1_epi32(p.a_zp);
  v.b_zp = _mm256_set1_epi32(p.b_zp);
  return v;
}

// 8 elements as int32, or one element broadcast (stride 0).
TQ_TARGET_AVX2 inline __m256i load8(const uint8_t* q, int64_t stride, bool is_unsigned) {
  if (stride == 0) {
    return _mm256_set1_epi32(is_unsigned ? static_cast<int32_t>(*q)
                                         : static_cast<int32_t>(static_cast<int8_t>(*q)));
  }
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q));
  return is_unsigned ? _mm256_cvtepu8_epi32(b) : _mm256_cvtepi8_epi32(b);
}

// NF ("NaN-free"): the caller has checked that no lane can be NaN (y finite for every code and
// 1 / out_scale finite, see nan_free_*), so the NaN -> zero point
// replacement, a no-op there, is skipped.
template <bool RELU, bool NF>
TQ_TARGET_AVX2 inline __m256 finish8(__m256 y, const Vp& v) {
  if (RELU) y = _mm256_max_ps(y, v.zero);
  __m256 t = _mm256_add_ps(
      _mm256_round_ps(_mm256_mul_ps(y, v.inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), v.zp);
  if (NF) return _mm256_min_ps(_mm256_max_ps(t, v.lo), v.hi);
  const __m256 nan = _mm256_cmp_ps(t, t, _CMP_UNORD_Q);
  t = _mm256_min_ps(_mm256_max_ps(t, v.lo), v.hi);
  return _mm256_blendv_ps(t, v.zp, nan);
}

// Whether no lane of a kernel call can be NaN: y (before the multiplication by 1 / out_scale) is
// finite whatever the codes (|code - zp| <= 255, products <= 65025) and 1 / out_scale is finite,
// so y / out_scale is finite or infinite (clamped), never NaN (no inf - inf, no inf * 0).
inline bool finite_all(std::initializer_list<float> xs) {
  for (float x : xs) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}
inline bool nan_free_binary(EwOp op, const EwParams& p) {
  if (op == EwOp::Add) {
    return finite_all({p.a_scale, p.b_scale, p.inv_out}) &&
           255.0 * (std::fabs(static_cast<double>(p.a_scale)) + std::fabs(static_cast<double>(p.b_scale))) < 1e38;
  }
  return finite_all({p.m, p.inv_out}) && 65025.0 * std::fabs(static_cast<double>(p.m)) < 1e38;
}
inline bool nan_free_unary(const EwParams& p) {
  return finite_all({p.m, p.c, p.inv_out}) &&
         255.0 * std::fabs(static_cast<double>(p.m)) + std::fabs(static_cast<double>(p.c)) < 1e38;
}

// Four vectors of integer-valued floats inside the output type -> 32 bytes.
TQ_TARGET_AVX2 inline void store32(uint8_t* dst, __m256 a, __m256 b, __m256 c, __m256 d,
                                   bool is_unsigned) {
  const __m256i ab = _mm256_packs_epi32(_mm256_cvtps_epi32(a), _mm256_cvtps_epi32(b));
  const __m256i cd = _mm256_packs_epi32(_mm256_cvtps_epi32(c), _mm256_cvtps_epi32(d));
  const __m256i bytes = is_unsigned ? _mm256_packus_epi16(ab, cd) : _mm256_packs_epi16(ab, cd);
  const __m256i ordered =
      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), ordered);
}

// One vector of integer-valued floats inside the output type -> 8 bytes (the rows of a
// broadcast whose length is a multiple of 8 but not of 32: 16, 24, 72 channels).
TQ_TARGET_AVX2 inline void store8(uint8_t* dst, __m256 a, bool is_unsigned) {
  const __m256i i32 = _mm256_cvtps_epi32(a);
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
  const __m128i bytes = is_unsigned ? _mm_packus_epi16(w, w) : _mm_packs_epi16(w, w);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), bytes);
}

// One vector of the binary op, with strides, signedness, op and relu fixed at compile time so
// that the loop carries no branch.
template <int SA, int SB, bool AU, bool BU, int OP, bool RELU, bool NF>
TQ_TARGET_AVX2 inline __m256 binary8(const uint8_t* a, const uint8_t* b, const Vp& v) {
  const __m256i x = _mm256_sub_epi32(load8(a, SA, AU), v.a_zp);
  const __m256i z = _mm256_sub_epi32(load8(b, SB, BU), v.b_zp);
  __m256 y;
  if (OP == 0) {
    y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(x), v.a_scale),
                      _mm256_mul_ps(_mm256_cvtepi32_ps(z), v.b_scale));
  } else {
    y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_mullo_epi32(x, z)), v.m);
  }
  return finish8<RELU, NF>(y, v);
}

template <int SA, int SB, bool AU, bool BU, int OP, bool RELU, bool NF>
TQ_TARGET_AVX2 int64_t binary_loop(const uint8_t* pa, const uint8_t* pb, uint8_t* po, int64_t n,
                                   const Vp& v, bool out_unsigned) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    store32(po + i, binary8<SA, SB, AU, BU, OP, RELU, NF>(pa + i * SA, pb + i * SB, v),
            binary8<SA, SB, AU, BU, OP, RELU, NF>(pa + (i + 8) * SA, pb + (i + 8) * SB, v),
            binary8<SA, SB, AU, BU, OP, RELU, NF>(pa + (i + 16) * SA, pb + (i + 16) * SB, v),
            binary8<SA, SB, AU, BU, OP, RELU, NF>(pa + (i + 24) * SA, pb + (i + 24) * SB, v), out_unsigned);
  }
  for (; i + 8 <= n; i += 8) {
    store8(po + i, binary8<SA, SB, AU, BU, OP, RELU, NF>(pa + i * SA, pb + i * SB, v), out_unsigned);
  }
  return i;
}

template <int SA, int SB, bool AU, bool BU, bool NF>
TQ_TARGET_AVX2 int64_t binary_dispatch_op(EwOp op, bool relu, const uint8_t* pa, const uint8_t* pb,
                                          uint8_t* po, int64_t n, const Vp& v, bool ou) {
  if (op == EwOp::Add) {
    return relu ? binary_loop<SA, SB, AU, BU, 0, true, NF>(pa, pb, po, n, v, ou)
                : binary_loop<SA, SB, AU, BU, 0, false, NF>(pa, pb, po, n, v, ou);
  }
  return relu ? binary_loop<SA, SB, AU, BU, 1, true, NF>(pa, pb, po, n, v, ou)
              : binary_loop<SA, SB, AU, BU, 1, false, NF>(pa, pb, po, n, v, ou);
}

template <int SA, int SB, bool NF>
TQ_TARGET_AVX2 int64_t binary_dispatch_nf(EwOp op, const uint8_t* pa, const uint8_t* pb, uint8_t* po,
                                          int64_t n, const Vp& v, const EwParams& p) {
  const bool ou = p.out_unsigned;
  if (p.a_unsigned) {
    return p.b_unsigned ? binary_dispatch_op<SA, SB, true, true, NF>(op, p.relu, pa, pb, po, n, v, ou)
                        : binary_dispatch_op<SA, SB, true, false, NF>(op, p.relu, pa, pb, po, n, v, ou);
  }
  return p.b_unsigned ? binary_dispatch_op<SA, SB, false, true, NF>(op, p.relu, pa, pb, po, n, v, ou)
                      : binary_dispatch_op<SA, SB, false, false, NF>(op, p.relu, pa, pb, po, n, v, ou);
}

template <int SA, int SB>
TQ_TARGET_AVX2 int64_t binary_dispatch(EwOp op, bool nf, const uint8_t* pa, const uint8_t* pb, uint8_t* po,
                                       int64_t n, const Vp& v, const EwParams& p) {
  return nf ? binary_dispatch_nf<SA, SB, true>(op, pa, pb, po, n, v, p)
            : binary_dispatch_nf<SA, SB, false>(op, pa, pb, po, n, v, p);
}

template <bool AU, bool RELU, bool NF>
TQ_TARGET_AVX2 inline __m256 unary8(const uint8_t* a, const Vp& v) {
  const __m256i x = _mm256_sub_epi32(load8(a, 1, AU), v.a_zp);
  return finish8<RELU, NF>(_mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(x), v.m), v.c), v);
}

template <bool AU, bool RELU, bool NF>
TQ_TARGET_AVX2 int64_t unary_loop(const uint8_t* pa, uint8_t* po, int64_t n, const Vp& v, bool ou) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    store32(po + i, unary8<AU, RELU, NF>(pa + i, v), unary8<AU, RELU, NF>(pa + i + 8, v),
            unary8<AU, RELU, NF>(pa + i + 16, v), unary8<AU, RELU, NF>(pa + i + 24, v), ou);
  }
  for (; i + 8 <= n; i += 8) store8(po + i, unary8<AU, RELU, NF>(pa + i, v), ou);
  return i;
}

template <bool AU>
TQ_TARGET_AVX2 int64_t unary_dispatch(bool nf, const uint8_t* pa, uint8_t* po, int64_t n, const Vp& v,
                                      const EwParams& p) {
  const bool ou = p.out_unsigned;
  if (p.relu) {
    return nf ? unary_loop<AU, true, true>(pa, po, n, v, ou) : unary_loop<AU, true, false>(pa, po, n, v, ou);
  }
  return nf ? unary_loop<AU, false, true>(pa, po, n, v, ou) : unary_loop<AU, false, false>(pa, po, n, v, ou);
}

}  // namespace

TQ_TARGET_AVX2 void ew_binary_rows__avx2(EwOp op, const char* a, int64_t sa, int64_t a_row, const char* b,
                                         int64_t sb, int64_t b_row, char* out, int64_t so, int64_t out_row,
                                         int64_t n, int64_t rows, const EwParams& p) {
  if ((sa != 0 && sa != 1) || (sb != 0 && sb != 1) || so != 1) {
    ew_binary_rows__scalar(op, a, sa, a_row, b, sb, b_row, out, so, out_row, n, rows, p);
    return;
  }
  const Vp v = vparams(p);
  const bool nf = nan_free_binary(op, p);
  for (int64_t r = 0; r < rows; ++r) {
    const auto* pa = reinterpret_cast<const uint8_t*>(a + r * a_row);
    const auto* pb = reinterpret_cast<const uint8_t*>(b + r * b_row);
    auto* po = reinterpret_cast<uint8_t*>(out + r * out_row);
    int64_t i;
    if (sa == 1) {
      i = sb == 1 ? binary_dispatch<1, 1>(op, nf, pa, pb, po, n, v, p) : binary_dispatch<1, 0>(op, nf, pa, pb, po, n, v, p);
    } else {
      i = sb == 1 ? binary_dispatch<0, 1>(op, nf, pa, pb, po, n, v, p) : binary_dispatch<0, 0>(op, nf, pa, pb, po, n, v, p);
    }
    if (i < n) ew_binary__scalar(op, pa + i * sa, sa, pb + i * sb, sb, po + i, 1, n - i, p);
  }
}

TQ_TARGET_AVX2 void ew_unary_rows__avx2(const char* a, int64_t sa, int64_t a_row, char* out, int64_t so,
                                        int64_t out_row, int64_t n, int64_t rows, const EwParams& p) {
  if (sa != 1 || so != 1) {
    ew_unary_rows__scalar(a, sa, a_row, out, so, out_row, n, rows, p);
    return;
  }
  const Vp v = vparams(p);
  const bool nf = nan_free_unary(p);
  for (int64_t r = 0; r < rows; ++r) {
    const auto* pa = reinterpret_cast<const uint8_t*>(a + r * a_row);
    auto* po = reinterpret_cast<uint8_t*>(out + r * out_row);
    const int64_t i =
        p.a_unsigned ? unary_dispatch<true>(nf, pa, po, n, v, p) : unary_dispatch<false>(nf, pa, po, n, v, p);
    if (i < n) ew_unary__scalar(pa + i, 1, po + i, 1, n - i, p);
  }
}

// One row: the 2-D forms with rows = 1.
void ew_binary__avx2(EwOp op, const void* a, int64_t sa, const void* b, int64_t sb, void* out, int64_t so,
                     int64_t n, const EwParams& p) {
  ew_binary_rows__avx2(op, static_cast<const char*>(a), sa, 0, static_cast<const char*>(b), sb, 0,
                       static_cast<char*>(out), so, 0, n, 1, p);
}

void ew_unary__avx2(const void* a, int64_t sa, void* out, int64_t so, int64_t n, const EwParams& p) {
  ew_unary_rows__avx2(static_cast<const char*>(a), sa, 0, static_cast<char*>(out), so, 0, n, 1, p);
}

// 32 codes per step: for each 16-entry slice k of the table, the codes whose high nibble is k
// get index (code ^ 16k) in [0, 15], which a saturating add of 0x70 keeps below 0x80 with its low
// nibble intact, while every other code reaches 0x80 or more, which vpshufb turns into 0: so the
// OR over the sixteen slices is the table entry.
TQ_TARGET_AVX2 void lookup_table__avx2(const uint8_t* a, const uint8_t* table, uint8_t* out, int64_t n,
                                       uint8_t flip) {
  __m256i slice[16];
  for (int k = 0; k < 16; ++k) {
    slice[k] = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table + 16 * k)));
  }
  const __m256i vflip = _mm256_set1_epi8(static_cast<char>(flip));
  const __m256i bias = _mm256_set1_epi8(0x70);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i v = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)), vflip);
    __m256i acc = _mm256_setzero_si256();
    for (int k = 0; k < 16; ++k) {
      const __m256i idx = _mm256_adds_epu8(_mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(k << 4))), bias);
      acc = _mm256_or_si256(acc, _mm256_shuffle_epi8(slice[k], idx));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), acc);
  }
  lookup_table__scalar(a + i, table, out + i, n - i, flip);
}

#else  // not x86: the scalar kernels serve

void lookup_table__avx2(const uint8_t* a, const uint8_t* table, uint8_t* out, int64_t n, uint8_t flip) {
  lookup_table__scalar(a, table, out, n, flip);
}

void ew_binary__avx2(EwOp op, const void* a, int64_t sa, const void* b, int64_t sb, void* out,
                     int64_t so, int64_t n, const EwParams& p) {
  ew_binary__scalar(op, a, sa, b, sb, out, so, n, p);
}
void ew_unary__avx2(const void* a, int64_t sa, void* out, int64_t so, int64_t n,
                    const EwParams& p) {
  ew_unary__scalar(a, sa, out, so, n, p);
}
void ew_binary_rows__avx2(EwOp op, const char* a, int64_t sa, int64_t a_row, const char* b, int64_t sb,
                          int64_t b_row, char* out, int64_t so, int64_t out_row, int64_t n, int64_t rows,
                          const EwParams& p) {
  ew_binary_rows__scalar(op, a, sa, a_row, b, sb, b_row, out, so, out_row, n, rows, p);
}
void ew_unary_rows__avx2(const char* a, int64_t sa, int64_t a_row, char* out, int64_t so, int64_t out_row,
                         int64_t n, int64_t rows, const EwParams& p) {
  ew_unary_rows__scalar(a, sa, a_row, out, so, out_row, n, rows, p);
}

#endif

}  // namespace cpu
}  // namespace torchquant
