// Observer statistics: CPU adapters (argument checks, layout, threads, choice of kernel
// variant) over the raw-pointer kernels of observe_scalar.cpp / observe_avx2.cpp, and the
// same ops built from ATen ops for every other device (CompositeExplicitAutograd; a device
// that registers its own kernel takes precedence).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/observe_checks.h"
#include "cpu/isa.h"
#include "cpu/observe_kernels.h"
#include "ops.h"

namespace torchquant {
namespace {

constexpr int64_t kGrain = 65536;  // elements per task: amortizes a thread wake-up
constexpr float kInf = std::numeric_limits<float>::infinity();

struct Kernels {
  decltype(&cpu::minmax__scalar) minmax;
  decltype(&cpu::minmax_rows__scalar) minmax_rows;
  decltype(&cpu::histogram_bins__scalar) histogram_bins;
};

const Kernels& kernels() {
  static const Kernels scalar{cpu::minmax__scalar, cpu::minmax_rows__scalar,
                              cpu::histogram_bins__scalar};
  static const Kernels avx2{cpu::minmax__avx2, cpu::minmax_rows__avx2, cpu::histogram_bins__avx2};
  // Reductions are bound by memory bandwidth: AVX-512 CPUs use the AVX2 kernels.
  return cpu_isa() == CpuIsa::Scalar ? scalar : avx2;
}

// Per-channel (or per-tensor, C = 1) minima and maxima of x, and its NaN / Inf counts.
struct MinMax {
  std::vector<float> mn, mx;
  int64_t nan = 0, inf = 0;
};

// Splits [0, work) into at most `max_chunks` ranges of at least `grain` units, runs them in
// parallel; chunk k writes only its own partial result, so the merge needs no locks and does
// not depend on which thread ran what.
// The number of ranges for_each_chunk splits `work` into: size per-chunk scratch with it.
int64_t chunk_count(int64_t work, int64_t grain, int64_t max_chunks = 4 * at::get_num_threads()) {
  if (work <= 0) return 0;
  return std::min<int64_t>(std::max<int64_t>(1, max_chunks), (work + grain - 1) / grain);
}

template <class F>
int64_t for_each_chunk(int64_t work, int64_t grain, F f,
                       int64_t max_chunks = 4 * at::get_num_threads()) {
  if (work <= 0) return 0;
  const int64_t chunks = chunk_count(work, grain, max_chunks);
  const int64_t per = (work + chunks - 1) / chunks;
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t lo = k * per, hi = std::min(work, lo + per);
      if (lo < hi) f(k, lo, hi);
    }
  });
  return chunks;
}

// x: float32, contiguous. axis < 0: one result.
MinMax reduce_minmax_cpu(const at::Tensor& x, int64_t axis, bool skip_inf) {
  const Kernels& k = kernels();
  const float* px = x.data_ptr<float>();
  const int64_t numel = x.numel();
  int64_t C = 1, inner = 1;
  if (axis >= 0) {
    C = x.size(axis);
    for (int64_t d = axis + 1; d < x.dim(); ++d) inner *= x.size(d);
  }
  MinMax r;
  r.mn.assign(C, kInf);
  r.mx.assign(C, -kInf);
  if (numel == 0) return r;
  // Scratch is sized by the chunks that actually run (chunk_count), not by the thread count:
  // one chunk must not pay for 4 x threads partial results.
  const int64_t max_chunks = 4 * at::get_num_threads();
  std::vector<int64_t> counts(2 * max_chunks, 0);
  if (axis < 0) {
    const int64_t chunks = chunk_count(numel, kGrain, max_chunks);
    std::vector<float> pmn(chunks, kInf), pmx(chunks, -kInf);
    const int64_t n = for_each_chunk(numel, kGrain, [&](int64_t c, int64_t b, int64_t e) {
      k.minmax(px + b, e - b, skip_inf, &pmn[c], &pmx[c], &counts[2 * c]);
    }, max_chunks);
    for (int64_t c = 0; c < n; ++c) {
      r.mn[0] = std::min(r.mn[0], pmn[c]);
      r.mx[0] = std::max(r.mx[0], pmx[c]);
    }
  } else if (inner >= 16) {
    // Runs of `inner` elements share a channel: reduce each run to one value.
    const int64_t outer = numel / (C * inner), blocks = outer * C;
    const int64_t grain = std::max<int64_t>(1, kGrain / inner);
    const int64_t chunks = chunk_count(blocks, grain, max_chunks);
    std::vector<float> pmn(chunks * C, kInf), pmx(chunks * C, -kInf);
    const int64_t n = for_each_chunk(blocks, grain, [&](int64_t c, int64_t b, int64_t e) {
      for (int64_t blk = b; blk < e; ++blk) {
        const int64_t ch = blk % C;
        k.minmax(px + blk * inner, inner, skip_inf, &pmn[c * C + ch], &pmx[c * C + ch],
                 &counts[2 * c]);
      }
    }, max_chunks);
    for (int64_t c = 0; c < n; ++c) {
      for (int64_t ch = 0; ch < C; ++ch) {
        r.mn[ch] = std::min(r.mn[ch], pmn[c * C + ch]);
        r.mx[ch] = std::max(r.mx[ch], pmx[c * C + ch]);
      }
    }
  } else {
    // Short runs: fold whole rows of C * inner elements element-wise, so the vector kernel
    // still sees long contiguous stretches, then fold the `inner` columns of each channel.
    const int64_t width = C * inner, rows = numel / width;
    const int64_t wanted = chunk_count(numel, kGrain, max_chunks);
    std::vector<float> pmn, pmx;
    int64_t n;
    if (width >= 16 * wanted) {
      // Wide rows ([4, 2e6] with ch_axis=1): split the columns. Each chunk folds all rows of
      // its columns into one set of accumulators, so the scratch is one row (width floats),
      // not one row per chunk. Column j still folds its rows in order, as one thread would.
      pmn.assign(width, kInf);
      pmx.assign(width, -kInf);
      const int64_t grain = std::max<int64_t>(16, kGrain / rows);
      for_each_chunk(width, grain, [&](int64_t c, int64_t b, int64_t e) {
        k.minmax_rows(px + b, rows, e - b, width, skip_inf, &pmn[b], &pmx[b], &counts[2 * c]);
      }, max_chunks);
      n = 1;
    } else {
      // Narrow rows: split the rows, one partial row per chunk that runs (width < 16 * chunks
      // here, so at most 16 * chunks^2 floats).
      const int64_t grain = std::max<int64_t>(1, kGrain / width);
      const int64_t chunks = chunk_count(rows, grain, max_chunks);
      pmn.assign(chunks * width, kInf);
      pmx.assign(chunks * width, -kInf);
      n = for_each_chunk(rows, grain, [&](int64_t c, int64_t b, int64_t e) {
        k.minmax_rows(px + b * width, e - b, width, width, skip_inf, &pmn[c * width],
                      &pmx[c * width], &counts[2 * c]);
      }, max_chunks);
    }
    // Same order of merges as an index j / inner per element, without the divisions.
    for (int64_t c = 0; c < n; ++c) {
      const float* cmn = &pmn[c * width];
      const float* cmx = &pmx[c * width];
      for (int64_t ch = 0; ch < C; ++ch) {
        for (int64_t i = 0; i < inner; ++i) {
          r.mn[ch] = std::min(r.mn[ch], cmn[ch * inner + i]);
          r.mx[ch] = std::max(r.mx[ch], cmx[ch * inner + i]);
        }
      }
    }
  }
  for (int64_t c = 0; c < max_chunks; ++c) {
    r.nan += counts[2 * c];
    r.inf += counts[2 * c + 1];
  }
  return r;
}

at::Tensor as_float_contiguous(const at::Tensor& x) {
  return x.to(at::kFloat).contiguous();  // a copy where x is not float32-contiguous: x untouched
}

// ---- helpers shared by the CPU and the generic implementations (argument checks: common/observe_checks.h) ----

// The exponent of the lowest set bit of a finite, nonzero double: d is an integer multiple of
// 2^lowest_bit(d).
int lowest_bit(double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  const int ex = static_cast<int>((bits >> 52) & 0x7ff);
  const uint64_t mant = bits & ((uint64_t{1} << 52) - 1);
  if (ex == 0) return -1074 + __builtin_ctzll(mant);  // subnormal: mant * 2^-1074
  return ex - 1075 + __builtin_ctzll(mant | (uint64_t{1} << 52));
}

// `run` after k times `run += part` in float64. Where no addition can round, that is
// run + k * part, computed exactly: run and part are multiples of 2^q (q the lower of their
// lowest set bits), and so is every partial sum, which stays under 2^(52 + q) in magnitude
// (the bound is checked with a factor of two to spare for the rounding of the check itself):
// each is representable, so each addition, and k * part and the final sum, are exact.
// Otherwise the k additions are made one by one.
double add_repeated(double run, double part, int64_t k) {
  // Adding a zero twice gives what adding it once gives (empty bins: most of a histogram's tails).
  if (part == 0.0) return k > 0 ? run + part : run;
  if (k > 4 && std::isfinite(part) && std::isfinite(run)) {
    const int q = run == 0.0 ? lowest_bit(part) : std::min(lowest_bit(run), lowest_bit(part));
    if (q + 51 >= -1022 && q + 51 <= 1023) {
      const uint64_t bound_bits = static_cast<uint64_t>(q + 51 + 1023) << 52;
      double bound;
      std::memcpy(&bound, &bound_bits, sizeof bound);  // 2^(51 + q)
      const double span = std::fabs(run) + static_cast<double>(k) * std::fabs(part);
      if (span < bound) return run + static_cast<double>(k) * part;
    }
  }
  for (int64_t c = 0; c < k; ++c) run += part;
  return run;
}

// Moves the histogram `hist` of [lo, hi] onto the bins of [new_lo, new_hi] (which contains
// it), with torch.ao's HistogramObserver's method: each bin is split into `up` equal parts,
// each part's count (bin / up) goes to the new bin holding its centre. A histogram of one
// point (lo == hi) moves whole. The positions are computed in float64 by plain loops (torch.ao
// uses linspace + bucketize, whose rounding depends on the thread split; the few boundary
// cases that differ are within a sub-bin of each other).
at::Tensor rebin(const at::Tensor& hist, float lo, float hi, float new_lo, float new_hi,
                 int64_t up) {
  const at::Tensor src = hist.to(at::kFloat).contiguous().cpu();
  const int64_t bins = src.numel();
  const float* h = src.data_ptr<float>();
  std::vector<double> acc(bins, 0.0);
  if (lo == hi) {
    const float inv = static_cast<float>(static_cast<double>(bins) /
                                         (static_cast<double>(new_hi) - new_lo));
    const int64_t b = new_hi > new_lo
                          ? cpu::histogram_bin(lo, new_lo, inv, static_cast<int32_t>(bins))
                          : std::min<int64_t>(bins / 2, bins - 1);
    for (int64_t i = 0; i < bins; ++i) acc[b] += h[i];
  } else {
    const double w = (static_cast<double>(hi) - lo) / static_cast<double>(bins * up);
    const double to_bin = static_cast<double>(bins) / (static_cast<double>(new_hi) - new_lo);
    const int64_t parts = bins * up;
    auto bin_of = [&](int64_t j) -> int64_t {
      const double centre = static_cast<double>(lo) + (static_cast<double>(j) + 0.5) * w;
      // floor, then clamp to [0, bins - 1], without a call to floor(): below 0 and at or
      // above `bins` the clamp decides, in between truncation is floor.
      const double t = (centre - new_lo) * to_bin;
      return t < 0.0 ? 0 : (t >= static_cast<double>(bins) ? bins - 1 : static_cast<int64_t>(t));
    };
    // The first part after j in (j, last] whose bin is past b, given bin_of(j) == b <
    // bin_of(last): guessed from where the centre crosses the edge of bin b + 1, confirmed
    // (or moved) with a few evaluations of bin_of, and found by bisection if the guess is off.
    auto run_end = [&](int64_t j, int64_t last, int64_t b) -> int64_t {
      const double edge = static_cast<double>(new_lo) + static_cast<double>(b + 1) / to_bin;
      const double guess = (edge - static_cast<double>(lo)) / w - 0.5;
      int64_t g = guess <= static_cast<double>(j + 1)
                      ? j + 1
                      : (guess >= static_cast<double>(last) ? last : static_cast<int64_t>(guess));
      for (int step = 0; step < 3; ++step) {
        if (bin_of(g) == b) {
          if (g + 1 > last || bin_of(g + 1) != b) return g + 1;
          ++g;
        } else {
          if (g - 1 <= j || bin_of(g - 1) == b) return g;
          --g;
        }
      }
      int64_t in = j, out = last;  // bin_of(in) == b < bin_of(out)
      while (out - in > 1) {
        const int64_t mid = in + (out - in) / 2;
        (bin_of(mid) == b ? in : out) = mid;
      }
      return out;
    };
    // Parts [a, e): consecutive parts nearly always land in the same new bin, whose sum stays
    // in a register until the bin changes. The parts of one old bin are walked as runs that
    // share a new bin (bin_of is non-decreasing: run_end finds where a run stops), and a
    // run of k parts is added with add_repeated, which equals k additions of `part` one at a
    // time. So the sums are those of acc[b] += part, part by part, bit for bit.
    auto move_parts = [&](int64_t a, int64_t e) {
      if (a >= e) return;
      int64_t cur = bin_of(a);
      double run = acc[cur];
      for (int64_t i = a / up, j = a; j < e; ++i) {
        const double part = static_cast<double>(h[i]) / static_cast<double>(up);
        const int64_t end = std::min(e, (i + 1) * up);
        const int64_t b_end = bin_of(end - 1);
        while (j < end) {
          const int64_t b = bin_of(j);
          int64_t stop = end;  // first part past the run of bin b
          if (b != b_end) stop = run_end(j, end - 1, b);
          if (b != cur) {
            acc[cur] = run;
            cur = b;
            run = acc[b];
          }
          run = add_repeated(run, part, stop - j);
          j = stop;
        }
      }
      acc[cur] = run;
    };
    // bin_of is non-decreasing in j (every step rounds monotonically and w, to_bin > 0), so
    // cutting [0, parts) only where the bin changes gives pieces with disjoint sets of new
    // bins, each bin's parts all in one piece and in order: the threads cannot change a sum.
    const int64_t pieces = parts >= 16384 ? std::max<int64_t>(1, at::get_num_threads()) : 1;
    std::vector<int64_t> cut(pieces + 1, parts);
    cut[0] = 0;
    for (int64_t k = 1; k < pieces; ++k) {
      int64_t j = std::max(cut[k - 1], k * parts / pieces);
      if (j > 0) {
        const int64_t prev = bin_of(j - 1);
        while (j < parts && bin_of(j) == prev) ++j;
      }
      cut[k] = j;
    }
    at::parallel_for(0, pieces, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) move_parts(cut[k], cut[k + 1]);
    });
  }
  at::Tensor out = at::empty({bins}, src.options());
  float* po = out.data_ptr<float>();
  for (int64_t i = 0; i < bins; ++i) po[i] = static_cast<float>(acc[i]);
  return out.to(hist.device());
}

// The bin every value of a one-point range [v, v] goes to: the middle one, as torch.histc
// widens such a range to [v - 1, v + 1].
int64_t middle_bin(int64_t bins) { return std::min<int64_t>(bins / 2, bins - 1); }

}  // namespace

// ---------------------------------------------------------------- CPU

std::tuple<at::Tensor, at::Tensor> aminmax_cpu(const at::Tensor& x, std::optional<int64_t> axis) {
  check_float_input(x, "x");
  const int64_t a = normalize_axis(axis, x, "x");
  const MinMax r = reduce_minmax_cpu(as_float_contiguous(x), a, /*skip_inf=*/false);
  const auto opts = x.options().dtype(at::kFloat);
  if (a < 0) {
    return {at::full({}, r.mn[0], opts), at::full({}, r.mx[0], opts)};
  }
  const int64_t C = x.size(a);
  at::Tensor mn = at::empty({C}, opts), mx = at::empty({C}, opts);
  std::copy(r.mn.begin(), r.mn.end(), mn.data_ptr<float>());
  std::copy(r.mx.begin(), r.mx.end(), mx.data_ptr<float>());
  return {mn, mx};
}

void observe_minmax_cpu(const at::Tensor& running_min, const at::Tensor& running_max,
                        const at::Tensor& nonfinite_count, const at::Tensor& x,
                        std::optional<int64_t> axis, std::optional<double> averaging_constant) {
  const int64_t a = check_observe_minmax_args(running_min, running_max, nonfinite_count, x, axis,
                                              averaging_constant);
  const int64_t C = running_min.numel();  // checked: one per channel
  const MinMax r = reduce_minmax_cpu(as_float_contiguous(x), a, /*skip_inf=*/true);
  float* rmn = running_min.data_ptr<float>();
  float* rmx = running_max.data_ptr<float>();
  int64_t* cnt = nonfinite_count.data_ptr<int64_t>();
  cnt[0] += r.nan;
  cnt[1] += r.inf;
  const float c = static_cast<float>(averaging_constant.value_or(1.0));
  for (int64_t ch = 0; ch < C; ++ch) {
    const float cmn = r.mn[ch], cmx = r.mx[ch];
    if (!(cmn <= cmx)) continue;  // nothing finite in this channel of this batch
    if (rmn[ch] == kInf && rmx[ch] == -kInf) {  // first observation
      rmn[ch] = cmn;
      rmx[ch] = cmx;
    } else if (!averaging_constant.has_value()) {
      rmn[ch] = std::min(rmn[ch], cmn);
      rmx[ch] = std::max(rmx[ch], cmx);
    } else {
      // torch.ao's float32 steps: running + c * (current - running), nothing fused.
      rmn[ch] = rmn[ch] + c * (cmn - rmn[ch]);
      rmx[ch] = rmx[ch] + c * (cmx - rmx[ch]);
    }
  }
}

void histogram_cpu(const at::Tensor& hist, const at::Tensor& min_val, const at::Tensor& max_val,
                   const at::Tensor& nonfinite_count, const at::Tensor& x, int64_t upsample_rate) {
  check_float_input(x, "x");
  check_histogram_args(hist, min_val, max_val, x, upsample_rate);
  check_counts(nonfinite_count, x);
  check_histogram_no_overlap(hist, min_val, max_val, nonfinite_count, x);
  float* plo = min_val.data_ptr<float>();
  float* phi = max_val.data_ptr<float>();
  check_histogram_range(*plo, *phi);
  const at::Tensor xc = as_float_contiguous(x);
  const MinMax r = reduce_minmax_cpu(xc, -1, /*skip_inf=*/true);
  int64_t* cnt = nonfinite_count.data_ptr<int64_t>();
  cnt[0] += r.nan;
  cnt[1] += r.inf;
  if (!(r.mn[0] <= r.mx[0])) return;  // nothing finite
  const int64_t bins = hist.numel();
  const bool seen = !(*plo == kInf || *phi == -kInf);
  const float lo = seen ? std::min(*plo, r.mn[0]) : r.mn[0];
  const float hi = seen ? std::max(*phi, r.mx[0]) : r.mx[0];
  if (!seen) {
    hist.zero_();
  } else if (lo != *plo || hi != *phi) {
    hist.copy_(rebin(hist, *plo, *phi, lo, hi, upsample_rate));
  }
  float* ph = hist.data_ptr<float>();
  if (lo == hi) {
    ph[middle_bin(bins)] += static_cast<float>(x.numel() - r.nan - r.inf);
  } else {
    const float inv = static_cast<float>(static_cast<double>(bins) /
                                         (static_cast<double>(hi) - static_cast<double>(lo)));
    const Kernels& k = kernels();
    const float* px = xc.data_ptr<float>();
    // One chunk per thread: at::parallel_for hands out chunks statically anyway, and every
    // chunk costs a histogram of counts to clear and merge (integer sums: any split is exact).
    const int64_t max_chunks = std::max<int64_t>(1, at::get_num_threads());
    std::vector<int64_t> counts(max_chunks * (bins + 1), 0);
    const int64_t n = for_each_chunk(
        xc.numel(), kGrain,
        [&](int64_t c, int64_t b, int64_t e) {
          k.histogram_bins(px + b, e - b, lo, inv, static_cast<int32_t>(bins),
                           &counts[c * (bins + 1)]);
        },
        max_chunks);
    for (int64_t b = 0; b < bins; ++b) {
      int64_t total = 0;
      for (int64_t c = 0; c < n; ++c) total += counts[c * (bins + 1) + b];
      ph[b] += static_cast<float>(total);
    }
  }
  *plo = lo;
  *phi = hi;
}

// ---------------------------------------------------------------- any device, from ATen ops

namespace {

// (min, max, counts[2]) of x, NaN skipped (and +-Inf with skip_inf); axis < 0: 0-dim results.
std::tuple<at::Tensor, at::Tensor, at::Tensor> reduce_minmax_generic(const at::Tensor& x,
                                                                     int64_t axis, bool skip_inf) {
  at::Tensor xf = x.to(at::kFloat);
  if (axis >= 0) xf = xf.movedim(axis, 0).reshape({x.size(axis), -1});
  else xf = xf.reshape({1, -1});
  const at::Tensor nan = at::isnan(xf), inf = at::isinf(xf);
  const at::Tensor skip = skip_inf ? at::logical_or(nan, inf) : nan;
  const at::Tensor mn = xf.numel() == 0 ? at::full({xf.size(0)}, kInf, xf.options())
                                        : at::where(skip, kInf, xf).amin(1);
  const at::Tensor mx = xf.numel() == 0 ? at::full({xf.size(0)}, -kInf, xf.options())
                                        : at::where(skip, -kInf, xf).amax(1);
  const at::Tensor counts = at::stack({nan.sum(), inf.sum()}).to(at::kLong);
  if (axis < 0) return {mn.reshape({}), mx.reshape({}), counts};
  return {mn, mx, counts};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> aminmax_generic(const at::Tensor& x,
                                                   std::optional<int64_t> axis) {
  check_float_input(x, "x");
  const int64_t a = normalize_axis(axis, x, "x");
  auto [mn, mx, counts] = reduce_minmax_generic(x, a, /*skip_inf=*/false);
  return {mn, mx};
}

void observe_minmax_generic(const at::Tensor& running_min, const at::Tensor& running_max,
                            const at::Tensor& nonfinite_count, const at::Tensor& x,
                            std::optional<int64_t> axis, std::optional<double> averaging_constant) {
  const int64_t a = check_observe_minmax_args(running_min, running_max, nonfinite_count, x, axis,
                                              averaging_constant);
  auto [cmn, cmx, counts] = reduce_minmax_generic(x, a, /*skip_inf=*/true);
  cmn = cmn.reshape(running_min.sizes());
  cmx = cmx.reshape(running_max.sizes());
  nonfinite_count.add_(counts.reshape(nonfinite_count.sizes()));
  // Selections instead of branches: no host sync.
  const at::Tensor has = cmn <= cmx;
  const at::Tensor fresh = at::logical_and(running_min == kInf, running_max == -kInf);
  at::Tensor nmn, nmx;
  if (averaging_constant.has_value()) {
    const double c = *averaging_constant;
    nmn = running_min + c * (cmn - running_min);
    nmx = running_max + c * (cmx - running_max);
  } else {
    nmn = at::minimum(running_min, cmn);
    nmx = at::maximum(running_max, cmx);
  }
  nmn = at::where(fresh, cmn, nmn);
  nmx = at::where(fresh, cmx, nmx);
  running_min.copy_(at::where(has, nmn, running_min));
  running_max.copy_(at::where(has, nmx, running_max));
}

void histogram_generic(const at::Tensor& hist, const at::Tensor& min_val,
                       const at::Tensor& max_val, const at::Tensor& nonfinite_count,
                       const at::Tensor& x, int64_t upsample_rate) {
  check_float_input(x, "x");
  check_histogram_args(hist, min_val, max_val, x, upsample_rate);
  check_counts(nonfinite_count, x);
  check_histogram_no_overlap(hist, min_val, max_val, nonfinite_count, x);
  // The range logic reads a few scalars on the host, as torch.ao's observer does.
  const float plo = min_val.item<float>(), phi = max_val.item<float>();
  check_histogram_range(plo, phi);
  auto [cmn, cmx, counts] = reduce_minmax_generic(x, -1, /*skip_inf=*/true);
  nonfinite_count.add_(counts.reshape(nonfinite_count.sizes()));
  const float xmn = cmn.item<float>(), xmx = cmx.item<float>();
  if (!(xmn <= xmx)) return;
  const int64_t bins = hist.numel();
  const bool seen = !(plo == kInf || phi == -kInf);
  const float lo = seen ? std::min(plo, xmn) : xmn;
  const float hi = seen ? std::max(phi, xmx) : xmx;
  if (!seen) {
    hist.zero_();
  } else if (lo != plo || hi != phi) {
    hist.copy_(rebin(hist, plo, phi, lo, hi, upsample_rate));
  }
  const at::Tensor xf = x.to(at::kFloat).reshape({-1});
  const at::Tensor finite = xf.masked_select(at::isfinite(xf));
  if (lo == hi) {
    hist.narrow(0, middle_bin(bins), 1).add_(finite.numel());
  } else {
    const float inv = static_cast<float>(static_cast<double>(bins) /
                                         (static_cast<double>(hi) - static_cast<double>(lo)));
    // NaN (0 * inf: a range too narrow for float32's inv) to bin 0, as cpu::histogram_bin.
    const at::Tensor idx = ((finite - lo) * inv).nan_to_num(0.0).clamp(0, bins - 1).to(at::kLong);
    hist.add_(at::bincount(idx, {}, bins).to(at::kFloat));
  }
  min_val.fill_(lo);
  max_val.fill_(hi);
}

at::Tensor histogram_rebin(const at::Tensor& hist, const at::Tensor& min_val,
                           const at::Tensor& max_val, const at::Tensor& new_min,
                           const at::Tensor& new_max, int64_t upsample_rate) {
  TORCH_CHECK(hist.defined() && hist.scalar_type() == at::kFloat && hist.dim() == 1 &&
                  hist.numel() >= 1,
              "argument 'hist' must be a 1-D float32 tensor with at least one bin");
  check_running(min_val, "min_val", hist, 1);
  check_running(max_val, "max_val", hist, 1);
  check_running(new_min, "new_min", hist, 1);
  check_running(new_max, "new_max", hist, 1);
  check_upsample_rate(upsample_rate, hist.numel());
  const float lo = min_val.item<float>(), hi = max_val.item<float>();
  const float nlo = new_min.item<float>(), nhi = new_max.item<float>();
  check_histogram_range(lo, hi);
  if (lo == kInf || hi == -kInf) return at::zeros_like(hist);  // nothing seen: nothing to move
  TORCH_CHECK(std::isfinite(nlo) && std::isfinite(nhi) && nlo <= lo && nhi >= hi,
              "arguments 'new_min'/'new_max' must be finite and contain [", lo, ", ", hi,
              "], got [", nlo, ", ", nhi, "]");
  if (lo == nlo && hi == nhi) return hist.clone();
  return rebin(hist.contiguous(), lo, hi, nlo, nhi, upsample_rate);
}

TORCH_LIBRARY_IMPL(torchquant, CPU, m) {
  m.impl("aminmax", &aminmax_cpu);
  m.impl("observe_minmax_", &observe_minmax_cpu);
  m.impl("histogram_", &histogram_cpu);
}

TORCH_LIBRARY_IMPL(torchquant, CompositeExplicitAutograd, m) {
  m.impl("aminmax", &aminmax_generic);
  m.impl("observe_minmax_", &observe_minmax_generic);
  m.impl("histogram_", &histogram_generic);
  m.impl("histogram_rebin", &histogram_rebin);
}

}  // namespace torchquant
