#include "common/pool_shape.h"

#include <ATen/ATen.h>

#include <string>

#include "common/checks.h"

namespace torchquant {
namespace {

const char* op_name(PoolKind kind, int64_t rank) {
  static const char* names[3][3] = {{"max_pool1d", "max_pool2d", "max_pool3d"},
                                    {"avg_pool1d", "avg_pool2d", "avg_pool3d"},
                                    {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"}};
  return names[static_cast<int>(kind)][rank - 1];
}

// A list argument as `rank` values: given with `rank` entries or one (repeated); `fallback`
// when empty (stride: the kernel size).
std::vector<int64_t> expand(const char* op, const char* name, at::IntArrayRef v, int64_t rank,
                            at::IntArrayRef fallback) {
  if (v.empty() && !fallback.empty()) return fallback.vec();
  TORCH_CHECK(static_cast<int64_t>(v.size()) == rank || v.size() == 1, op, ": argument '", name,
              "' must hold 1 or ", rank, " values, got ", v);
  return v.size() == 1 ? std::vector<int64_t>(rank, v[0]) : v.vec();
}

// torch's pooling_output_shape: ceil_mode rounds up, but the last window must start inside
// the input or its left padding.
int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  // Floor division (span may be negative).
  int64_t out = (span >= 0 ? span / s : -((-span + s - 1) / s)) + 1;
  if (ceil_mode && out > 0 && (out - 1) * s >= in + p) --out;
  return out;
}

}  // namespace

PoolProblem pool_problem(const at::Tensor& x_in, PoolKind kind, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, bool ceil_mode, bool count_include_pad,
                         std::optional<int64_t> divisor_override, at::IntArrayRef output_size) {
  const bool adaptive = kind == PoolKind::Adaptive;
  const int64_t rank = static_cast<int64_t>(adaptive ? output_size.size() : kernel_size.size());
  TORCH_CHECK(rank >= 1 && rank <= 3, "int8 pooling: argument '", adaptive ? "output_size" : "kernel_size",
              "' must hold 1, 2 or 3 values (the spatial dimensions), got ",
              adaptive ? output_size : kernel_size);
  const char* op = op_name(kind, rank);
  check_int8_input(x_in, "x");
  TORCH_CHECK(x_in.dim() == rank + 1 || x_in.dim() == rank + 2, op, ": argument 'x' must be ",
              rank + 1, "-d (unbatched) or ", rank + 2, "-d (batched), got shape ", x_in.sizes());
  PoolProblem p;
  p.unbatched = x_in.dim() == rank + 1;
  const at::Tensor x = p.unbatched ? x_in.unsqueeze(0) : x_in;
  for (int64_t i = 1; i < x.dim(); ++i) {
    TORCH_CHECK(x.size(i) > 0, op, ": argument 'x' must have non-zero sizes in every dimension but the "
                "batch, got shape ", x_in.sizes());
  }
  PoolGeometry& g = p.g;
  g.N = x.size(0);
  g.C = x.size(1);
  for (int64_t j = 0; j < rank; ++j) {
    // The windows' first index, tap count and divisor live in int32 tables: an input length
    // past 2^31 wrapped them (out-of-bounds reads, a zero divisor).
    TORCH_CHECK(x.size(2 + j) <= 2147483647, op, ": argument 'x' must have spatial sizes below 2^31, got ",
                x.sizes());
    g.in[3 - rank + j] = x.size(2 + j);
  }

  int64_t k[3] = {1, 1, 1}, s[3] = {1, 1, 1}, pad[3] = {0, 0, 0}, dil[3] = {1, 1, 1}, osz[3] = {1, 1, 1};
  if (adaptive) {
    for (int64_t j = 0; j < rank; ++j) {
      TORCH_CHECK(output_size[j] >= 0, op, ": argument 'output_size' must hold sizes >= 0, got ",
                  output_size);
      // Each output position's window lives in int32 tables (as torch takes sizes as int).
      TORCH_CHECK(output_size[j] <= 2147483647, op,
                  ": argument 'output_size' must hold sizes below 2^31, got ", output_size);
      osz[3 - rank + j] = output_size[j];
    }
  } else {
    const auto kk = kernel_size.vec();
    const auto ss = expand(op, "stride", stride, rank, kernel_size);
    const auto pp = expand(op, "padding", padding, rank, {});
    const auto dd = kind == PoolKind::Max ? expand(op, "dilation", dilation, rank, {}) : std::vector<int64_t>(rank, 1);
    for (int64_t j = 0; j < rank; ++j) {
      TORCH_CHECK(kk[j] > 0, op, ": argument 'kernel_size' must be positive, got ", kernel_size);
      TORCH_CHECK(ss[j] > 0, op, ": argument 'stride' must be positive, got ", at::IntArrayRef(ss));
      TORCH_CHECK(dd[j] > 0, op, ": argument 'dilation' must be positive, got ", at::IntArrayRef(dd));
      // torch's 2-d / 3-d pooling takes these as int ("value cannot be converted to type int
      // without overflow"); past it the window arithmetic below (and its int32 tables) would
      // overflow: a dilation of 2^63 - 1 gave an output larger than the input.
      constexpr int64_t kIntMax = 2147483647;
      TORCH_CHECK(kk[j] <= kIntMax, op, ": argument 'kernel_size' must hold values below 2^31, got ",
                  kernel_size);
      TORCH_CHECK(ss[j] <= kIntMax, op, ": argument 'stride' must hold values below 2^31, got ",
                  at::IntArrayRef(ss));
      TORCH_CHECK(dd[j] <= kIntMax, op, ": argument 'dilation' must hold values below 2^31, got ",
                  at::IntArrayRef(dd));
      TORCH_CHECK(pp[j] >= 0 && pp[j] <= kk[j] / 2, op,
                  ": argument 'padding' must be at least 0 and at most half of kernel_size, got padding=",
                  at::IntArrayRef(pp), " and kernel_size=", kernel_size);
      const int64_t jj = 3 - rank + j;
      k[jj] = kk[j];
      s[jj] = ss[j];
      pad[jj] = pp[j];
      dil[jj] = dd[j];
      osz[jj] = pooled_size(g.in[jj], k[jj], s[jj], pad[jj], dil[jj], ceil_mode);
    }
    bool empty = false;
    for (int64_t j = 0; j < 3; ++j) empty |= osz[j] <= 0;
    TORCH_CHECK(!empty, op, ": given input of shape ", x_in.sizes(), " the calculated output size is ",
                at::IntArrayRef(osz, 3).slice(3 - rank), ": too small (kernel_size=", kernel_size,
                ", padding=", at::IntArrayRef(pad, 3).slice(3 - rank), ", dilation=",
                at::IntArrayRef(dil, 3).slice(3 - rank), ")");
    if (divisor_override.has_value()) {
      TORCH_CHECK(*divisor_override != 0, op, ": argument 'divisor_override' must not be 0");
      g.divisor_override = *divisor_override;
    }
  }

  int64_t max_taps = 1;
  g.tables.resize(3 * (osz[0] + osz[1] + osz[2]));
  {
    int32_t* t = g.tables.data();
    for (int64_t j = 0; j < 3; ++j) {
      g.first[j] = t;
      g.taps[j] = t + osz[j];
      g.div[j] = t + 2 * osz[j];
      t += 3 * osz[j];
    }
  }
  g.kind = kind;
  g.count_include_pad = count_include_pad;
  for (int64_t j = 0; j < 3; ++j) {
    g.out[j] = osz[j];
    g.step[j] = dil[j];
    g.kernel[j] = k[j];
    g.stride[j] = s[j];
    g.pad[j] = pad[j];
    const int64_t in = g.in[j];
    int32_t* t_first = const_cast<int32_t*>(g.first[j]);
    int32_t* t_taps = const_cast<int32_t*>(g.taps[j]);
    int32_t* t_div = const_cast<int32_t*>(g.div[j]);
    int64_t most = 0;
    for (int64_t o = 0; o < osz[j]; ++o) {
      int64_t first, n, div;
      if (adaptive) {
        first = (o * in) / osz[j];
        const int64_t end = ((o + 1) * in + osz[j] - 1) / osz[j];
        n = end - first;
        div = n;
      } else if (kind == PoolKind::Max) {
        const int64_t start = o * s[j] - pad[j], d = dil[j];
        const int64_t t0 = start >= 0 ? 0 : (-start + d - 1) / d;
        const int64_t t1 = std::min(k[j], in - start > 0 ? (in - start + d - 1) / d : int64_t{0});
        n = std::max<int64_t>(t1 - t0, 0);
        first = n > 0 ? start + t0 * d : 0;
        div = 1;
      } else {
        const int64_t start = o * s[j] - pad[j];
        const int64_t end = std::min(start + k[j], in + pad[j]);
        const int64_t lo = std::max<int64_t>(start, 0), hi = std::min(end, in);
        n = std::max<int64_t>(hi - lo, 0);
        first = lo;
        div = count_include_pad ? end - start : n;
      }
      t_first[o] = static_cast<int32_t>(first);
      t_taps[o] = static_cast<int32_t>(n);
      t_div[o] = static_cast<int32_t>(div);
      most = std::max(most, n);
    }
    max_taps *= most;
  }
  g.max_taps = max_taps;

  // Layout: channels-last stays channels-last (C innermost), anything else is read as
  // contiguous; strided inputs are copied once into that layout.
  if (x.dim() == 4 || x.dim() == 5) {
    const auto mf = x.suggest_memory_format();
    g.channels_last = mf != at::MemoryFormat::Contiguous && g.C > 1;
    const auto want = g.channels_last ? mf : at::MemoryFormat::Contiguous;
    p.x5 = x.is_contiguous(want) ? x : x.contiguous(want);
  } else {
    g.channels_last = g.C > 1 && x.size(2) > 1 && x.stride(1) == 1 && x.stride(2) == g.C;
    p.x5 = g.channels_last ? x.transpose(1, 2).contiguous().transpose(1, 2) : x.contiguous();
  }
  p.out_channels_last = g.channels_last;
  // One input pixel and one output pixel per image: both layouts are the same bytes, and the
  // channels-last kernels walk them along C.
  if (g.in[0] * g.in[1] * g.in[2] == 1 && g.out[0] * g.out[1] * g.out[2] == 1) g.channels_last = true;
  p.out_shape = {g.N, g.C};
  for (int64_t j = 0; j < rank; ++j) p.out_shape.push_back(osz[3 - rank + j]);
  return p;
}

at::Tensor pool_output5(const PoolProblem& p) {
  const auto opts = p.x5.options();
  const auto& shape = p.out_shape;
  if (!p.out_channels_last) return at::empty(shape, opts);
  if (shape.size() == 4) return at::empty(shape, opts.memory_format(at::MemoryFormat::ChannelsLast));
  if (shape.size() == 5) return at::empty(shape, opts.memory_format(at::MemoryFormat::ChannelsLast3d));
  return at::empty({shape[0], shape[2], shape[1]}, opts).transpose(1, 2);
}

at::Tensor pool_result(const PoolProblem& p, const at::Tensor& out) {
  return p.unbatched ? out.squeeze(0) : out;
}

int32_t pool_zero_point(const at::Tensor& x, const at::Tensor& zero_point, at::Tensor* device_zp) {
  TORCH_CHECK(zero_point.defined(), "argument 'zero_point' must be a tensor, got None");
  TORCH_CHECK(at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false),
              "argument 'zero_point' must be an integer tensor, got dtype ", zero_point.scalar_type());
  TORCH_CHECK(zero_point.numel() == 1, "argument 'zero_point' must have 1 element (per-tensor "
              "quantization), got ", zero_point.numel());
  check_same_device(x, "x", zero_point, "zero_point");
  if (!x.device().is_cpu()) {
    *device_zp = zero_point_int32(zero_point.reshape({1})).contiguous();
    return 0;
  }
  const int64_t z = zero_point.scalar_type() == at::kInt ? int64_t{*zero_point.const_data_ptr<int32_t>()}
                    : zero_point.scalar_type() == at::kLong ? *zero_point.const_data_ptr<int64_t>()
                    : zero_point.reshape({1}).to(at::kLong).const_data_ptr<int64_t>()[0];
  const int64_t lo = x.scalar_type() == at::kByte ? 0 : -128, hi = x.scalar_type() == at::kByte ? 255 : 127;
  TORCH_CHECK(z >= lo && z <= hi, "argument 'zero_point' must lie in [", lo, ", ", hi, "] for ",
              x.scalar_type(), ", got ", z);
  return static_cast<int32_t>(z);
}

}  // namespace torchquant
