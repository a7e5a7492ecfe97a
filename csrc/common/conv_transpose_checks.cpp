#include "common/conv_transpose_checks.h"

#include <ATen/ATen.h>

#include <vector>

#include "common/checks.h"
#include "common/conv_checks.h"

namespace torchquant {

ConvTransposeSetup conv_transpose_weight_setup(const at::Tensor& w, int64_t groups) {
  TORCH_CHECK(w.defined(), "argument 'w' must be a tensor, got None");
  TORCH_CHECK(w.scalar_type() == at::kChar, "argument 'w' must be an int8 tensor, got dtype ",
              w.scalar_type());
  TORCH_CHECK(w.dim() >= 3 && w.dim() <= 5, "argument 'w' must be a 3-D, 4-D or 5-D transposed "
              "conv weight [Cin, Cout / groups, *kernel_size], got shape ", w.sizes());
  TORCH_CHECK(groups >= 1, "argument 'groups' must be >= 1, got ", groups);
  ConvTransposeSetup s;
  s.nsp = static_cast<int>(w.dim() - 2);
  s.groups = groups;
  TORCH_CHECK(w.size(0) % groups == 0, "argument 'groups' (", groups,
              ") must divide the input channels of 'w' (", w.size(0), ", its first dimension)");
  s.Cg = w.size(0) / groups;
  s.Ng = w.size(1);
  s.Cout = s.Ng * groups;
  for (int d = 0; d < s.nsp; ++d) s.g.k[3 - s.nsp + d] = w.size(2 + d);
  s.khw = s.g.k[1] * s.g.k[2];
  check_k_bound(s.g.taps() * s.Cg, "w");
  return s;
}

ConvTransposeSetup conv_transpose_setup(const at::Tensor& x, const at::Tensor& w_col_sums,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef output_padding,
                                        at::IntArrayRef dilation, int64_t groups) {
  check_int8_input(x, "x");
  const int64_t nk = static_cast<int64_t>(kernel_size.size());
  TORCH_CHECK(nk >= 1 && nk <= 3, "argument 'kernel_size' must have 1, 2 or 3 elements "
              "(conv_transpose1d, 2d, 3d), got ", kernel_size);
  ConvTransposeSetup s;
  s.nsp = static_cast<int>(nk);
  TORCH_CHECK(x.dim() == nk + 2, "Expected ", nk + 2, "D (batched) input to conv_transpose", nk,
              "d (argument 'x' [N, C, *spatial]), but got input of size: ", x.sizes());
  const auto ks = conv_list_arg(kernel_size, s.nsp, "kernel_size", 1, "transposed convolution");
  const auto st = conv_list_arg(stride, s.nsp, "stride", 1, "transposed convolution");
  const auto pd = conv_list_arg(padding, s.nsp, "padding", 0, "transposed convolution");
  const auto op = conv_list_arg(output_padding, s.nsp, "output_padding", 0, "transposed convolution");
  const auto dl = conv_list_arg(dilation, s.nsp, "dilation", 1, "transposed convolution");
  TORCH_CHECK(groups >= 1, "argument 'groups' must be >= 1, got ", groups);
  s.groups = groups;
  check_w_col_sums(x, w_col_sums, "pack_conv_transpose_weight");
  s.g.N = x.size(0);
  s.g.C = x.size(1);
  TORCH_CHECK(s.g.C % groups == 0, "argument 'groups' (", groups,
              ") must divide the input channels of 'x' (", s.g.C, ")");
  s.Cg = s.g.C / groups;
  for (int d = 0; d < s.nsp; ++d) {
    const int e = 3 - s.nsp + d;
    s.g.in[e] = x.size(2 + d);
    s.g.k[e] = ks[d];
    s.g.stride[e] = st[d];
    s.g.pad[e] = pd[d];
    s.g.dil[e] = dl[d];
    s.out_pad[e] = op[d];
    // torch's rule (conv_transpose*d): output_padding below stride or below dilation.
    TORCH_CHECK(op[d] < st[d] || op[d] < dl[d], "argument 'output_padding' must be smaller than "
                "either stride or dilation, got output_padding=", output_padding, ", stride=",
                stride, ", dilation=", dilation);
    TORCH_CHECK(s.g.in[e] >= 1, "argument 'x' must have non-zero spatial sizes (as torch's "
                "conv_transpose", nk, "d), got input of size: ", x.sizes());
    s.g.out[e] = (s.g.in[e] - 1) * st[d] - 2 * pd[d] + dl[d] * (ks[d] - 1) + op[d] + 1;
    TORCH_CHECK(s.g.out[e] >= 1, "the output of conv_transpose", nk,
                "d would have size ", s.g.out[e], " in spatial dimension ", d, " (input size ",
                s.g.in[e], ", kernel_size ", ks[d], ", stride ", st[d], ", padding ", pd[d],
                ", output_padding ", op[d], ", dilation ", dl[d], "): padding is too large");
  }
  s.khw = s.g.k[1] * s.g.k[2];
  const int64_t taps = s.g.taps();
  TORCH_CHECK(w_col_sums.numel() % (taps * groups) == 0,
              "argument 'w_col_sums' must have groups * taps * Cout / groups elements (from "
              "pack_conv_transpose_weight with this kernel_size and groups), got ",
              w_col_sums.numel(), " elements for kernel_size ", kernel_size, " and groups ", groups);
  s.Ng = w_col_sums.numel() / (taps * groups);
  s.Cout = s.Ng * groups;
  check_k_bound(taps * s.Cg, "x");
  return s;
}

at::Tensor conv_transpose_empty_output(const ConvTransposeSetup& s, const at::TensorOptions& options,
                                       bool cpu_output) {
  return conv_like_empty_output(s.nsp, s.g.N, s.g.out, s.Cout, options, cpu_output);
}

}  // namespace torchquant
