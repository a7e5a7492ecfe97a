// Argument checks of the observer ops, shared by every device's implementation so that a bad
// argument is reported the same way on all of them.
#include "common/observe_checks.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <initializer_list>
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
  TORCH_CHECK(!c.has_value() || (*c >= 0.0 && *c <= 1.0),
              "argument 'averaging_constant' must lie in [0, 1] or be None, got ", *c);
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
  check_upsample_rate(upsample_rate, hist.numel());
}

void check_upsample_rate(int64_t upsample_rate, int64_t bins) {
  TORCH_CHECK(upsample_rate >= 1, "argument 'upsample_rate' must be >= 1, got ", upsample_rate);
  constexpr int64_t kMaxParts = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(upsample_rate <= kMaxParts / bins, "argument 'upsample_rate' must be at most ",
              kMaxParts / bins, " for ", bins, " bins (bins * upsample_rate <= 2^31 - 1), got ",
              upsample_rate);
}

void check_histogram_range(float lo, float hi) {
  const float inf = std::numeric_limits<float>::infinity();
  TORCH_CHECK((lo == inf && hi == -inf) || (std::isfinite(lo) && std::isfinite(hi) && lo <= hi),
              "arguments 'min_val'/'max_val' must hold a finite range with min_val <= max_val, or "
              "(+inf, -inf) for an empty histogram, got [", lo, ", ", hi, "]");
}

namespace {

struct NamedTensor {
  const at::Tensor& t;
  const char* name;
};

// No two of args share memory. Every argument but the last is written by the op (the last, x,
// is only read), so each pair has a written side, named first in the error: a write through
// one would change what is read through the other.
void check_none_overlap(std::initializer_list<NamedTensor> args) {
  for (auto out = args.begin(); out + 1 != args.end(); ++out) {
    for (auto other = out + 1; other != args.end(); ++other) {
      const at::MemOverlapStatus s = at::get_overlap_status(out->t, other->t);
      // TooHard: a layout ATen does not compare (non-dense); sharing a storage then counts as
      // overlap.
      const bool overlap =
          s == at::MemOverlapStatus::Full || s == at::MemOverlapStatus::Partial ||
          (s == at::MemOverlapStatus::TooHard && out->t.storage().is_alias_of(other->t.storage()));
      TORCH_CHECK(!overlap, "arguments '", out->name, "' and '", other->name, "' share memory; '",
                  out->name, "' is written by this op and must not overlap any other argument");
    }
  }
}

}  // namespace

void check_histogram_no_overlap(const at::Tensor& hist, const at::Tensor& min_val,
                                const at::Tensor& max_val, const at::Tensor& nonfinite_count,
                                const at::Tensor& x) {
  check_none_overlap({{hist, "hist"}, {min_val, "min_val"}, {max_val, "max_val"},
                      {nonfinite_count, "nonfinite_count"}, {x, "x"}});
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
  check_none_overlap({{running_min, "running_min"}, {running_max, "running_max"},
                      {nonfinite_count, "nonfinite_count"}, {x, "x"}});
  return a;
}

}  // namespace torchquant
