#include "common/conv_transpose_checks.h"

#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>

#include <vector>

#include "common/checks.h"
#include "common/conv_checks.h"

namespace torchquant {

namespace {

constexpr ConvLikeNames kConvTransposeNames{
    "conv_transpose", "conv_transpose1d, 2d, 3d", "transposed convolution", "pack_conv_transpose_weight",
    "transposed conv weight [Cin, Cout / groups, *kernel_size]"};

}  // namespace

ConvTransposeSetup conv_transpose_weight_setup(const at::Tensor& w, int64_t groups) {
  ConvTransposeSetup s;
  s.nsp = conv_like_weight_checks(w, groups, kConvTransposeNames, s.g);
  s.groups = groups;
  TORCH_CHECK(w.size(0) % groups == 0, "argument 'groups' (", groups,
              ") must divide the input channels of 'w' (", w.size(0), ", its first dimension)");
  s.Cg = w.size(0) / groups;
  s.Ng = w.size(1);
  s.Cout = s.Ng * groups;
  s.khw = s.g.k[1] * s.g.k[2];
  check_k_bound(s.g.taps() * s.Cg, "w");
  return s;
}

ConvTransposeSetup conv_transpose_setup(const at::Tensor& x, const at::Tensor& w_col_sums,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef output_padding,
                                        at::IntArrayRef dilation, int64_t groups) {
  ConvTransposeSetup s;
  s.nsp = conv_like_input_checks(x, w_col_sums, kernel_size, stride, padding, dilation, groups,
                                 kConvTransposeNames, s.g);
  const int64_t nk = s.nsp;
  const auto op = conv_list_arg(output_padding, s.nsp, "output_padding", 0, kConvTransposeNames.op);
  s.groups = groups;
  s.Cg = s.g.C / groups;
  for (int d = 0; d < s.nsp; ++d) {
    const int e = 3 - s.nsp + d;
    const int64_t st = s.g.stride[e], pd = s.g.pad[e], dl = s.g.dil[e], ks = s.g.k[e];
    s.out_pad[e] = op[d];
    // torch's rule (conv_transpose*d): output_padding below stride or below dilation.
    TORCH_CHECK(op[d] < st || op[d] < dl, "argument 'output_padding' must be smaller than "
                "either stride or dilation, got output_padding=", output_padding, ", stride=",
                stride, ", dilation=", dilation);
    TORCH_CHECK(s.g.in[e] >= 1, "argument 'x' must have non-zero spatial sizes (as torch's "
                "conv_transpose", nk, "d), got input of size: ", x.sizes());
    // (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1, every
    // step in int64 without overflow (a wrapped size could pass the check below).
    int64_t grown = 0, reach = 0, cut = 0;
    const bool overflow = c10::mul_overflows(s.g.in[e] - 1, st, &grown) ||
                          c10::mul_overflows(dl, ks - 1, &reach) ||
                          c10::add_overflows(grown, reach, &grown) ||
                          c10::add_overflows(grown, op[d] + 1, &grown) ||
                          c10::mul_overflows(pd, int64_t{2}, &cut);
    TORCH_CHECK(!overflow, "the output of conv_transpose", nk, "d would have a size past int64 in "
                "spatial dimension ", d, " (input size ", s.g.in[e], ", kernel_size ", ks, ", stride ",
                st, ", padding ", pd, ", output_padding ", op[d], ", dilation ", dl,
                "): argument 'stride', 'padding' or 'dilation' is too large");
    s.g.out[e] = grown - cut;
    TORCH_CHECK(s.g.out[e] >= 1, "the output of conv_transpose", nk,
                "d would have size ", s.g.out[e], " in spatial dimension ", d, " (input size ",
                s.g.in[e], ", kernel_size ", ks, ", stride ", st, ", padding ", pd,
                ", output_padding ", op[d], ", dilation ", dl, "): padding is too large");
  }
  s.khw = s.g.k[1] * s.g.k[2];
  const int64_t taps = s.g.taps();  // no overflow: conv_like_input_checks
  int64_t taps_groups = 0;
  const bool many = c10::mul_overflows(taps, groups, &taps_groups);  // then no numel is a multiple
  TORCH_CHECK(!many && w_col_sums.numel() % taps_groups == 0,
              "argument 'w_col_sums' must have groups * taps * Cout / groups elements (from "
              "pack_conv_transpose_weight with this kernel_size and groups), got ",
              w_col_sums.numel(), " elements for kernel_size ", kernel_size, " and groups ", groups);
  s.Ng = w_col_sums.numel() / taps_groups;
  s.Cout = s.Ng * groups;
  int64_t K = 0;
  TORCH_CHECK(!c10::mul_overflows(taps, s.Cg, &K), "the inner dimension K of 'x' (", taps,
              " kernel taps times ", s.Cg, " channels per group) is past the largest K (", kMaxK, ")");
  check_k_bound(K, "x");
  return s;
}

at::Tensor conv_transpose_empty_output(const ConvTransposeSetup& s, const at::TensorOptions& options,
                                       bool cpu_output) {
  return conv_like_empty_output(s.nsp, s.g.N, s.g.out, s.Cout, options, cpu_output);
}

}  // namespace torchquant
