// Raw-pointer kernels for the observers' statistics, one signature per kernel, declared
// together for every ISA so that dispatch and tests can swap them freely.
//
// Min/max kernels fold x into running accumulators that the caller initializes (+inf for
// mins, -inf for maxes: the identities). NaN never enters a min or max. With skip_inf, +-Inf
// do not either: observers keep their range finite and let infinite values saturate at
// quantization time. counts[0] += number of NaN, counts[1] += number of +-Inf (always
// counted, whether skipped or not). Min and max are exact, so every variant, every order of
// traversal and the reference agree bit for bit (signed zeros aside: -0.0 and +0.0 compare
// equal and either may be returned).
#pragma once

#include <cstdint>

namespace torchquant {
namespace cpu {

#define TQ_DECLARE_OBSERVE_KERNELS(SUFFIX)                                                     \
  /* mn/mx: one accumulator each, over x[0, n). */                                             \
  void minmax__##SUFFIX(const float* x, int64_t n, bool skip_inf, float* mn, float* mx,        \
                        int64_t* counts);                                                      \
  /* x is rows x width with rows `stride` floats apart; mn/mx hold width accumulators:       */ \
  /* column j folds x[r * stride + j] for every r.                                          */ \
  void minmax_rows__##SUFFIX(const float* x, int64_t rows, int64_t width, int64_t stride,      \
                             bool skip_inf, float* mn, float* mx, int64_t* counts);            \
  /* counts[b] += #finite x with bin b = (int)clamp((x - lo) * inv_width, 0, bins - 1), the  */ \
  /* float32 product and clamp exactly as written (a NaN product, 0 * inf, clamps to 0);     */ \
  /* counts[bins] += #non-finite x. counts has bins + 1 entries.                            */ \
  void histogram_bins__##SUFFIX(const float* x, int64_t n, float lo, float inv_width,          \
                                int32_t bins, int64_t* counts);

TQ_DECLARE_OBSERVE_KERNELS(scalar)
TQ_DECLARE_OBSERVE_KERNELS(avx2)

#undef TQ_DECLARE_OBSERVE_KERNELS

// The one-element bin rule shared by every variant.
inline int32_t histogram_bin(float x, float lo, float inv_width, int32_t bins) {
  float t = (x - lo) * inv_width;  // >= 0 since lo <= x; +inf only if x - lo overflows
  // NaN (x == lo with an infinite inv_width: a range too narrow for float32, hi - lo below
  // bins / FLT_MAX) goes to bin 0 as the AVX2 kernel's max_ps sends it; converting it would
  // be undefined behaviour.
  t = t > 0.0f ? t : 0.0f;
  const float top = static_cast<float>(bins - 1);
  t = t > top ? top : t;
  return static_cast<int32_t>(t);  // t in [0, bins - 1]: the conversion is exact truncation
}

}  // namespace cpu
}  // namespace torchquant
