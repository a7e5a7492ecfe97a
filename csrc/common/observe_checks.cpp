// Argument checks of the observer ops, shared by every device's implementation so that a bad
// argument is reported the same way on all of them.
#include "common/observe_checks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <limits>

#include "common/checks.h"

namespace torchquant {

void check_running(const at::Tensor& t, const char* name, const at::Tensor& x, int64_t C) {
  TORCH_CHECK(t.defined(), "argument '", name, "' must be a tensor, got None");
  TORCH_CHECK(t.scalar_type() == at::kFloat, "argument '", name,
              "' must be a float32 tensor, got dtype ", t.scalar_type());
  check_same_device(x, "x", t, name);
  TORCH_CHECK(t.numel() == C, "argument '", name, "' must have ", C,
              C == 1 ? " element (per tensor)" : " elements (one per channel)", ", got ",
              t.numel(), " (shape ", t.sizes(), ")");
  TORCH_CHECK(t.is_contiguous(), "argument '", name, "' must be contiguous");
}

void check_counts(const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.defined(), "argument 'nonfinite_count' must be a tensor, got None");
  TORCH_CHECK(t.scalar_type() == at::kLong,
              "argument 'nonfinite_count' must be an int64 tensor, got dtype ", t.scalar_type());
  check_same_device(x, "x", t, "nonfinite_count");
  TORCH_CHECK(t.numel() == 2 && t.is_contiguous(),
              "argument 'nonfinite_count' must be a contiguous tensor of 2 elements (NaN count, "
              "Inf count), got shape ", t.sizes());
}

void check_averaging_constant(std::optional<double> c) {
  TORCH_CHECK(!c.has_value() || (*c > 0.0 && *c <= 1.0),
              "argument 'averaging_constant' must lie in (0, 1] or be None, got ", *c);
}

void check_histogram_args(const at::Tensor& hist, const at::Tensor& min_val,
                          const at::Tensor& max_val, const at::Tensor& x, int64_t upsample_rate) {
  TORCH_CHECK(hist.defined() && hist.scalar_type() == at::kFloat && hist.dim() == 1 &&
                  hist.numel() >= 1 && hist.is_contiguous(),
              "argument 'hist' must be a contiguous 1-D float32 tensor with at least one bin, got ",
              hist.defined() ? c10::toString(hist.scalar_type()) : "None", " of shape ",
              hist.defined() ? hist.sizes() : at::IntArrayRef{});
  TORCH_CHECK(hist.numel() <= std::numeric_limits<int32_t>::max() - 1,
              "argument 'hist' has too many bins: ", hist.numel());
  check_same_device(x, "x", hist, "hist");
  check_running(min_val, "min_val", x, 1);
  check_running(max_val, "max_val", x, 1);
  TORCH_CHECK(upsample_rate >= 1, "argument 'upsample_rate' must be >= 1, got ", upsample_rate);
}

int64_t check_observe_minmax_args(const at::Tensor& running_min, const at::Tensor& running_max,
                                  const at::Tensor& nonfinite_count, const at::Tensor& x,
                                  std::optional<int64_t> axis,
                                  std::optional<double> averaging_constant) {
  check_float_input(x, "x");
  const int64_t a = normalize_axis(axis, x, "x");
  const int64_t C = a < 0 ? 1 : x.size(a);
  check_running(running_min, "running_min", x, C);
  check_running(running_max, "running_max", x, C);
  check_counts(nonfinite_count, x);
  check_averaging_constant(averaging_constant);
  return a;
}

}  // namespace torchquant
