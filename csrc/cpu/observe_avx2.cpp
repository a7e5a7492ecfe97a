// AVX2 observer kernels. Same signatures and results as observe_scalar.cpp:
// - d = v - v is +0 for a finite lane and NaN for a NaN or +-Inf lane, so one unordered
//   compare on d finds every non-finite lane; lanes it flags are recounted one by one (rare),
//   so the NaN / Inf counts are exact.
// - With skip_inf, w = v | d (bitwise) is v for a finite lane (d's bits are all zero) and NaN
//   otherwise (d's NaN sets the exponent and the quiet bit). (v + d would turn -0.0 into +0.0.)
// - minmax_impl folds blocks without these checks and redoes a block whose running sum is not
//   finite (see there).
// - _mm256_min_ps(w, acc) / _mm256_max_ps(w, acc) return their second operand when the first
//   is NaN, so a NaN lane leaves the accumulator as it was: NaN-skipping without a blend. The
//   accumulators start at +-inf and never become NaN.
// - Min and max round nothing, so the lane order of the final reduction cannot change the
//   result.
// - Histogram bins use the same float32 subtract, multiply and clamps as histogram_bin(); the
//   build uses -ffp-contract=off and no FMA intrinsic appears, so nothing is fused. After the
//   clamps t lies in [0, bins - 1] (a NaN t, from a non-finite lane, becomes 0 in max_ps and is
//   then redirected to the spare bin), so _mm256_cvttps_epi32 truncates exactly as the scalar
//   cast does.
// Tails shorter than a vector go through the scalar kernels.
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/isa.h"
#include "cpu/observe_kernels.h"
#include "cpu/scratch.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

inline void count_lanes(const float* x, int64_t n, int64_t* counts) {
  for (int64_t k = 0; k < n; ++k) {
    if (std::isnan(x[k])) {
      ++counts[0];
    } else if (std::isinf(x[k])) {
      ++counts[1];
    }
  }
}

TQ_TARGET_AVX2 inline float hmin(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

TQ_TARGET_AVX2 inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// One vector folded into (mn, mx); returns the unordered mask of v - v (non-finite lanes).
template <bool kSkipInf>
TQ_TARGET_AVX2 inline __m256 fold8(__m256 v, __m256& mn, __m256& mx) {
  const __m256 d = _mm256_sub_ps(v, v);
  const __m256 w = kSkipInf ? _mm256_or_ps(v, d) : v;
  mn = _mm256_min_ps(w, mn);
  mx = _mm256_max_ps(w, mx);
  return _mm256_cmp_ps(d, d, _CMP_UNORD_Q);
}

// The exact loop: every vector checked for non-finite lanes as it is folded.
template <bool kSkipInf>
TQ_TARGET_AVX2 void minmax_exact(const float* x, int64_t n, __m256& mn0, __m256& mn1, __m256& mn2,
                                 __m256& mn3, __m256& mx0, __m256& mx1, __m256& mx2, __m256& mx3,
                                 int64_t* counts) {
  for (int64_t i = 0; i + 32 <= n; i += 32) {
    const __m256 b0 = fold8<kSkipInf>(_mm256_loadu_ps(x + i), mn0, mx0);
    const __m256 b1 = fold8<kSkipInf>(_mm256_loadu_ps(x + i + 8), mn1, mx1);
    const __m256 b2 = fold8<kSkipInf>(_mm256_loadu_ps(x + i + 16), mn2, mx2);
    const __m256 b3 = fold8<kSkipInf>(_mm256_loadu_ps(x + i + 24), mn3, mx3);
    const __m256 bad = _mm256_or_ps(_mm256_or_ps(b0, b1), _mm256_or_ps(b2, b3));
    if (__builtin_expect(_mm256_movemask_ps(bad) != 0, 0)) count_lanes(x + i, 32, counts);
  }
}

// Blocks of kBlock floats go through a loop of three operations per vector: min, max, and a
// running sum that only serves as a detector. The sum of a block is finite exactly when no lane
// was NaN or +-Inf, barring an overflow of large finite values; when it is not finite, the
// block's accumulators are restored and the block is folded again by the exact loop, which
// counts and skips. Either way every finite value reaches min/max as itself, so the result is
// the exact loop's. (NaN lanes never enter min/max: _mm256_min_ps returns its second operand.)
template <bool kSkipInf>
TQ_TARGET_AVX2 void minmax_impl(const float* x, int64_t n, float* mn, float* mx,
                                int64_t* counts) {
  constexpr int64_t kBlock = 2048;
  __m256 mn0 = _mm256_set1_ps(*mn), mn1 = mn0, mn2 = mn0, mn3 = mn0;
  __m256 mx0 = _mm256_set1_ps(*mx), mx1 = mx0, mx2 = mx0, mx3 = mx0;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    const __m256 smn0 = mn0, smn1 = mn1, smn2 = mn2, smn3 = mn3;
    const __m256 smx0 = mx0, smx1 = mx1, smx2 = mx2, smx3 = mx3;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    const float* b = x + i;
    for (int64_t j = 0; j < kBlock; j += 32) {
      const __m256 v0 = _mm256_loadu_ps(b + j), v1 = _mm256_loadu_ps(b + j + 8);
      const __m256 v2 = _mm256_loadu_ps(b + j + 16), v3 = _mm256_loadu_ps(b + j + 24);
      mn0 = _mm256_min_ps(v0, mn0);
      mx0 = _mm256_max_ps(v0, mx0);
      s0 = _mm256_add_ps(s0, v0);
      mn1 = _mm256_min_ps(v1, mn1);
      mx1 = _mm256_max_ps(v1, mx1);
      s1 = _mm256_add_ps(s1, v1);
      mn2 = _mm256_min_ps(v2, mn2);
      mx2 = _mm256_max_ps(v2, mx2);
      s2 = _mm256_add_ps(s2, v2);
      mn3 = _mm256_min_ps(v3, mn3);
      mx3 = _mm256_max_ps(v3, mx3);
      s3 = _mm256_add_ps(s3, v3);
    }
    const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    const __m256 d = _mm256_sub_ps(s, s);  // NaN in a lane whose sum is not finite
    if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(d, d, _CMP_UNORD_Q)) != 0, 0)) {
      mn0 = smn0, mn1 = smn1, mn2 = smn2, mn3 = smn3;
      mx0 = smx0, mx1 = smx1, mx2 = smx2, mx3 = smx3;
      minmax_exact<kSkipInf>(b, kBlock, mn0, mn1, mn2, mn3, mx0, mx1, mx2, mx3, counts);
    }
  }
  const int64_t tail32 = (n - i) - (n - i) % 32;
  minmax_exact<kSkipInf>(x + i, tail32, mn0, mn1, mn2, mn3, mx0, mx1, mx2, mx3, counts);
  i += tail32;
  for (; i + 8 <= n; i += 8) {
    const __m256 bad = fold8<kSkipInf>(_mm256_loadu_ps(x + i), mn0, mx0);
    if (_mm256_movemask_ps(bad) != 0) count_lanes(x + i, 8, counts);
  }
  *mn = hmin(_mm256_min_ps(_mm256_min_ps(mn0, mn1), _mm256_min_ps(mn2, mn3)));
  *mx = hmax(_mm256_max_ps(_mm256_max_ps(mx0, mx1), _mm256_max_ps(mx2, mx3)));
  minmax__scalar(x + i, n - i, kSkipInf, mn, mx, counts);
}

// Folds one row's vector columns [0, vec_end) into the accumulators in memory.
template <bool kSkipInf>
TQ_TARGET_AVX2 inline void fold_row(const float* row, int64_t vec_end, float* mn, float* mx,
                                    int64_t* counts) {
  for (int64_t j = 0; j < vec_end; j += 8) {
    __m256 a = _mm256_loadu_ps(mn + j), b = _mm256_loadu_ps(mx + j);
    const __m256 bad = fold8<kSkipInf>(_mm256_loadu_ps(row + j), a, b);
    _mm256_storeu_ps(mn + j, a);
    _mm256_storeu_ps(mx + j, b);
    if (__builtin_expect(_mm256_movemask_ps(bad) != 0, 0)) count_lanes(row + j, 8, counts);
  }
}

// Rows are folded kRowGroup at a time: each 8-column slice of the accumulators is loaded and
// stored once per group instead of once per row (the accumulator traffic, not the data, was
// the bottleneck), and the group's rows stream side by side, each sequentially. Every column
// still sees its rows in increasing order, so even the choice between -0.0 and +0.0 matches
// the row-by-row loop.
template <bool kSkipInf>
TQ_TARGET_AVX2 void minmax_rows_impl(const float* x, int64_t rows, int64_t width, int64_t stride,
                                     float* mn, float* mx, int64_t* counts) {
  constexpr int64_t kRowGroup = 8;
  const int64_t vec_end = width - width % 8;
  int64_t r = 0;
  for (; r + kRowGroup <= rows; r += kRowGroup) {
    const float* r0 = x + r * stride;
    for (int64_t j = 0; j < vec_end; j += 8) {
      __m256 a = _mm256_loadu_ps(mn + j), b = _mm256_loadu_ps(mx + j);
      __m256 bad = _mm256_setzero_ps();
#pragma GCC unroll 8
      for (int64_t k = 0; k < kRowGroup; ++k) {
        bad = _mm256_or_ps(bad, fold8<kSkipInf>(_mm256_loadu_ps(r0 + k * stride + j), a, b));
      }
      _mm256_storeu_ps(mn + j, a);
      _mm256_storeu_ps(mx + j, b);
      if (__builtin_expect(_mm256_movemask_ps(bad) != 0, 0)) {
        for (int64_t k = 0; k < kRowGroup; ++k) count_lanes(r0 + k * stride + j, 8, counts);
      }
    }
    if (vec_end < width) {
      minmax_rows__scalar(r0 + vec_end, kRowGroup, width - vec_end, stride, kSkipInf,
                          mn + vec_end, mx + vec_end, counts);
    }
  }
  for (; r < rows; ++r) {
    const float* row = x + r * stride;
    fold_row<kSkipInf>(row, vec_end, mn, mx, counts);
    if (vec_end < width) {
      minmax_rows__scalar(row + vec_end, 1, width - vec_end, stride, kSkipInf, mn + vec_end,
                          mx + vec_end, counts);
    }
  }
}

}  // namespace

TQ_TARGET_AVX2 void minmax__avx2(const float* x, int64_t n, bool skip_inf, float* mn, float* mx,
                                 int64_t* counts) {
  if (skip_inf) {
    minmax_impl<true>(x, n, mn, mx, counts);
  } else {
    minmax_impl<false>(x, n, mn, mx, counts);
  }
}

TQ_TARGET_AVX2 void minmax_rows__avx2(const float* x, int64_t rows, int64_t width,
                                      int64_t stride, bool skip_inf, float* mn, float* mx,
                                      int64_t* counts) {
  if (skip_inf) {
    minmax_rows_impl<true>(x, rows, width, stride, mn, mx, counts);
  } else {
    minmax_rows_impl<false>(x, rows, width, stride, mn, mx, counts);
  }
}

namespace {

// Bin indices of 8 values: the float32 steps of histogram_bin(), non-finite lanes to `bins`.
TQ_TARGET_AVX2 inline __m256i bin8(__m256 v, __m256 vlo, __m256 vinv, __m256 zero, __m256 top,
                                   __m256i spare) {
  const __m256 d = _mm256_sub_ps(v, v);
  const __m256 bad = _mm256_cmp_ps(d, d, _CMP_UNORD_Q);
  __m256 t = _mm256_mul_ps(_mm256_sub_ps(v, vlo), vinv);
  t = _mm256_min_ps(_mm256_max_ps(t, zero), top);
  return _mm256_blendv_epi8(_mm256_cvttps_epi32(t), spare, _mm256_castps_si256(bad));
}

// The increments, one read-modify-write per value, bound these loops; the indices leave the
// vector two at a time (one 64-bit move, then a shift and a 32-bit truncation), which costs
// fewer micro-ops than one 32-bit extract per index. Every index lies in [0, bins] and
// bins < 2^31, so both halves are the non-negative int32 values. Lane pair j of every vector
// counts into h[j] (H = 4 sub-histograms) or all into h[0] (H = 1).
template <int H, class C>
TQ_TARGET_AVX2 inline void count8(__m256i b, C* const h[4]) {
  const __m128i lo4 = _mm256_castsi256_si128(b), hi4 = _mm256_extracti128_si256(b, 1);
  const uint64_t q0 = static_cast<uint64_t>(_mm_cvtsi128_si64(lo4));
  const uint64_t q1 = static_cast<uint64_t>(_mm_extract_epi64(lo4, 1));
  const uint64_t q2 = static_cast<uint64_t>(_mm_cvtsi128_si64(hi4));
  const uint64_t q3 = static_cast<uint64_t>(_mm_extract_epi64(hi4, 1));
  C* const h0 = h[0];
  C* const h1 = h[H > 1 ? 1 : 0];
  C* const h2 = h[H > 1 ? 2 : 0];
  C* const h3 = h[H > 1 ? 3 : 0];
  ++h0[static_cast<uint32_t>(q0)];
  ++h0[q0 >> 32];
  ++h1[static_cast<uint32_t>(q1)];
  ++h1[q1 >> 32];
  ++h2[static_cast<uint32_t>(q2)];
  ++h2[q2 >> 32];
  ++h3[static_cast<uint32_t>(q3)];
  ++h3[q3 >> 32];
}

}  // namespace

// Short inputs (and histograms of 65536 bins or more) count straight into `counts`. Long ones
// count into four 32-bit sub-histograms, one per lane pair: a run of values in one bin (the
// zeros of ReLU activations, a constant region) then spreads its increments over four counters
// instead of chaining every read-modify-write on the one before it through the store buffer
// (ReLU'd data took twice as long as Gaussian data with one histogram). The sub-histograms are added into `counts` every
// kSubBlock values, far below 2^32, and at the end: integer sums, so the split changes nothing.
TQ_TARGET_AVX2 void histogram_bins__avx2(const float* x, int64_t n, float lo, float inv_width,
                                         int32_t bins, int64_t* counts) {
  constexpr int64_t kSplitMin = 65536, kSubBlock = int64_t{1} << 22;
  const __m256 vlo = _mm256_set1_ps(lo), vinv = _mm256_set1_ps(inv_width),
               zero = _mm256_setzero_ps(), top = _mm256_set1_ps(static_cast<float>(bins - 1));
  const __m256i spare = _mm256_set1_epi32(bins);
  int64_t i = 0;
  // Sub-histograms only while four of them stay small (1 MiB at most).
  if (n >= kSplitMin && bins < 65536) {
    const int64_t width = int64_t{bins} + 1;
    thread_local std::vector<uint32_t> sub_buf;
    uint32_t* sub = scratch(sub_buf, static_cast<size_t>(4 * width));
    uint32_t* const h[4] = {sub, sub + width, sub + 2 * width, sub + 3 * width};
    const int64_t vec_end = n - n % 16;
    while (i < vec_end) {
      std::memset(sub, 0, sizeof(uint32_t) * static_cast<size_t>(4 * width));
      const int64_t stop = vec_end - i > kSubBlock ? i + kSubBlock : vec_end;
      for (; i < stop; i += 16) {
        count8<4>(bin8(_mm256_loadu_ps(x + i), vlo, vinv, zero, top, spare), h);
        count8<4>(bin8(_mm256_loadu_ps(x + i + 8), vlo, vinv, zero, top, spare), h);
      }
      for (int64_t b = 0; b < width; ++b) {
        counts[b] += int64_t{h[0][b]} + int64_t{h[1][b]} + int64_t{h[2][b]} + int64_t{h[3][b]};
      }
    }
  } else {
    int64_t* const h[4] = {counts, counts, counts, counts};
    for (; i + 16 <= n; i += 16) {
      count8<1>(bin8(_mm256_loadu_ps(x + i), vlo, vinv, zero, top, spare), h);
      count8<1>(bin8(_mm256_loadu_ps(x + i + 8), vlo, vinv, zero, top, spare), h);
    }
  }
  histogram_bins__scalar(x + i, n - i, lo, inv_width, bins, counts);
}

#else  // not x86: the dispatcher never selects AVX2; keep the symbols for one signature set.

void minmax__avx2(const float* x, int64_t n, bool s, float* mn, float* mx, int64_t* c) { minmax__scalar(x, n, s, mn, mx, c); }
void minmax_rows__avx2(const float* x, int64_t r, int64_t w, int64_t st, bool s, float* mn, float* mx, int64_t* c) { minmax_rows__scalar(x, r, w, st, s, mn, mx, c); }
void histogram_bins__avx2(const float* x, int64_t n, float lo, float inv, int32_t b, int64_t* c) { histogram_bins__scalar(x, n, lo, inv, b, c); }
#endif

}  // namespace cpu
}  // namespace torchquant
