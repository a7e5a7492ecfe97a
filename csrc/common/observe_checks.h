// Argument checks of the observer ops (aminmax, observe_minmax_, histogram_), shared by the
// CPU, CUDA and generic implementations.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace torchquant {

// A running statistic: float32, contiguous, C elements, on x's device.
void check_running(const at::Tensor& t, const char* name, const at::Tensor& x, int64_t C);
// nonfinite_count: int64, contiguous, 2 elements (NaN count, Inf count), on x's device.
void check_counts(const at::Tensor& t, const at::Tensor& x);
// None, or a moving-average constant in [0, 1] (0: the first batch sets the statistics for good).
void check_averaging_constant(std::optional<double> c);
// Every argument of observe_minmax_; returns the axis normalized into [0, x.dim()), -1 for per tensor.
int64_t check_observe_minmax_args(const at::Tensor& running_min, const at::Tensor& running_max,
                                  const at::Tensor& nonfinite_count, const at::Tensor& x,
                                  std::optional<int64_t> axis,
                                  std::optional<double> averaging_constant);
// hist: contiguous 1-D float32 with >= 1 bin; min_val/max_val one-element running statistics;
// upsample_rate as check_upsample_rate.
void check_histogram_args(const at::Tensor& hist, const at::Tensor& min_val,
                          const at::Tensor& max_val, const at::Tensor& x, int64_t upsample_rate);
// upsample_rate >= 1 and bins * upsample_rate (the parts a rebin walks) <= 2^31 - 1: the count
// of parts cannot overflow, and a rebin's time stays bounded.
void check_upsample_rate(int64_t upsample_rate, int64_t bins);
// A histogram's range [lo, hi]: empty (lo = +inf or hi = -inf, as a fresh observer's), or
// finite with lo <= hi. Anything else (NaN, one infinite end, lo > hi) is corrupt state.
void check_histogram_range(float lo, float hi);
// No two of histogram_'s arguments share memory (hist, min_val, max_val, nonfinite_count are
// written; x is read after hist is).
void check_histogram_no_overlap(const at::Tensor& hist, const at::Tensor& min_val,
                                const at::Tensor& max_val, const at::Tensor& nonfinite_count,
                                const at::Tensor& x);

}  // namespace torchquant
