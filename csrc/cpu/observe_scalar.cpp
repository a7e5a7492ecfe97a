// Scalar observer kernels: the plain loops every SIMD variant must reproduce.
#include <cmath>

#include "cpu/observe_kernels.h"

namespace torchquant {
namespace cpu {

namespace {
// One element folded into (mn, mx); returns false where x is not used.
inline void fold(float v, bool skip_inf, float& mn, float& mx, int64_t* counts) {
  if (std::isnan(v)) {
    ++counts[0];
    return;
  }
  if (std::isinf(v)) {
    ++counts[1];
    if (skip_inf) return;
  }
  mn = v < mn ? v : mn;
  mx = v > mx ? v : mx;
}
}  // namespace

void minmax__scalar(const float* x, int64_t n, bool skip_inf, float* mn, float* mx,
                    int64_t* counts) {
  float lo = *mn, hi = *mx;
  for (int64_t i = 0; i < n; ++i) fold(x[i], skip_inf, lo, hi, counts);
  *mn = lo;
  *mx = hi;
}

void minmax_rows__scalar(const float* x, int64_t rows, int64_t width, int64_t stride,
                         bool skip_inf, float* mn, float* mx, int64_t* counts) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * stride;
    for (int64_t j = 0; j < width; ++j) fold(row[j], skip_inf, mn[j], mx[j], counts);
  }
}

void histogram_bins__scalar(const float* x, int64_t n, float lo, float inv_width, int32_t bins,
                            int64_t* counts) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (std::isfinite(v)) {
      ++counts[histogram_bin(v, lo, inv_width, bins)];
    } else {
      ++counts[bins];
    }
  }
}

}  // namespace cpu
}  // namespace torchquant
