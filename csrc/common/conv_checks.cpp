#include "common/conv_checks.h"

#include <ATen/ATen.h>

#include <vector>

#include "common/checks.h"
#include "cpu/alloc.h"

namespace torchquant {

std::vector<int64_t> conv_list_arg(at::IntArrayRef v, int nsp, const char* name, int64_t min,
                                   const char* op) {
  TORCH_CHECK(v.size() == static_cast<size_t>(nsp) || v.size() == 1, "argument '", name,
              "' must have 1 or ", nsp, " elements for a ", nsp, "-d ", op, ", got ", v);
  std::vector<int64_t> out(nsp, v[0]);
  if (v.size() != 1) out.assign(v.begin(), v.end());
  for (int64_t e : out) {
    TORCH_CHECK(e >= min, "argument '", name, "' must hold values >= ", min, ", got ", v);
  }
  return out;
}

void check_w_col_sums(const at::Tensor& x, const at::Tensor& w_col_sums, const char* packer) {
  TORCH_CHECK(w_col_sums.defined(), "argument 'w_col_sums' must be a tensor, got None");
  check_same_device(x, "x", w_col_sums, "w_col_sums");
  TORCH_CHECK(w_col_sums.scalar_type() == at::kInt && w_col_sums.dim() == 1 &&
                  w_col_sums.is_contiguous(),
              "argument 'w_col_sums' must be a contiguous 1-D int32 tensor (from ", packer,
              "), got dtype ", w_col_sums.scalar_type(), " and shape ", w_col_sums.sizes());
}

at::Tensor conv_like_empty_output(int nsp, int64_t N, const int64_t* out, int64_t Cout,
                                  const at::TensorOptions& options, bool cpu_output) {
  std::vector<int64_t> sizes{N};
  std::vector<int64_t> perm{0, nsp + 1};
  for (int d = 0; d < nsp; ++d) {
    sizes.push_back(out[3 - nsp + d]);
    perm.push_back(1 + d);
  }
  sizes.push_back(Cout);
  at::Tensor t = cpu_output ? cpu::empty_output(sizes, options) : at::empty(sizes, options);
  return t.permute(perm);
}

ConvSetup conv_weight_setup(const at::Tensor& w, int64_t groups) {
  TORCH_CHECK(w.defined(), "argument 'w' must be a tensor, got None");
  TORCH_CHECK(w.scalar_type() == at::kChar, "argument 'w' must be an int8 tensor, got dtype ",
              w.scalar_type());
  TORCH_CHECK(w.dim() >= 3 && w.dim() <= 5, "argument 'w' must be a 3-D, 4-D or 5-D conv weight "
              "[Cout, Cin / groups, *kernel_size], got shape ", w.sizes());
  TORCH_CHECK(groups >= 1, "argument 'groups' must be >= 1, got ", groups);
  ConvSetup s;
  s.nsp = static_cast<int>(w.dim() - 2);
  s.groups = groups;
  s.Cout = w.size(0);
  TORCH_CHECK(s.Cout % groups == 0, "argument 'groups' (", groups,
              ") must divide the output channels of 'w' (", s.Cout, ")");
  s.Cg = w.size(1);
  s.Ng = s.Cout / groups;
  for (int d = 0; d < s.nsp; ++d) s.g.k[3 - s.nsp + d] = w.size(2 + d);
  s.Kg = s.g.taps() * s.Cg;
  check_k_bound(s.Kg, "w");
  s.depthwise = s.Cg == 1 && s.Ng == 1;
  return s;
}

ConvSetup conv_setup(const at::Tensor& x, const at::Tensor& w_col_sums,
                     at::IntArrayRef kernel_size, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_int8_input(x, "x");
  const int64_t nk = static_cast<int64_t>(kernel_size.size());
  TORCH_CHECK(nk >= 1 && nk <= 3, "argument 'kernel_size' must have 1, 2 or 3 elements "
              "(conv1d, conv2d, conv3d), got ", kernel_size);
  ConvSetup s;
  s.nsp = static_cast<int>(nk);
  TORCH_CHECK(x.dim() == nk + 2, "Expected ", nk + 2, "D (batched) input to conv", nk,
              "d (argument 'x' [N, C, *spatial]), but got input of size: ", x.sizes());
  const auto ks = conv_list_arg(kernel_size, s.nsp, "kernel_size", 1, "convolution");
  const auto st = conv_list_arg(stride, s.nsp, "stride", 1, "convolution");
  const auto pd = conv_list_arg(padding, s.nsp, "padding", 0, "convolution");
  const auto dl = conv_list_arg(dilation, s.nsp, "dilation", 1, "convolution");
  TORCH_CHECK(groups >= 1, "argument 'groups' must be >= 1, got ", groups);
  s.groups = groups;
  check_w_col_sums(x, w_col_sums, "pack_conv_weight");
  s.g.N = x.size(0);
  s.g.C = x.size(1);
  TORCH_CHECK(s.g.C % groups == 0, "argument 'groups' (", groups,
              ") must divide the input channels of 'x' (", s.g.C, ")");
  s.Cout = w_col_sums.size(0);
  TORCH_CHECK(s.Cout % groups == 0, "argument 'groups' (", groups,
              ") must divide the output channels (", s.Cout, ", the size of 'w_col_sums')");
  s.Cg = s.g.C / groups;
  s.Ng = s.Cout / groups;
  for (int d = 0; d < s.nsp; ++d) {
    const int e = 3 - s.nsp + d;
    s.g.in[e] = x.size(2 + d);
    s.g.k[e] = ks[d];
    s.g.stride[e] = st[d];
    s.g.pad[e] = pd[d];
    s.g.dil[e] = dl[d];
    const int64_t span = dl[d] * (ks[d] - 1) + 1, padded = s.g.in[e] + 2 * pd[d];
    TORCH_CHECK(padded >= span, "the padded input of 'x' (size ", padded, " in spatial dimension ",
                d, ") is smaller than the dilated kernel (size ", span, ")");
    s.g.out[e] = (padded - span) / st[d] + 1;
  }
  s.Kg = s.g.taps() * s.Cg;
  check_k_bound(s.Kg, "x");
  s.depthwise = s.Cg == 1 && s.Ng == 1;
  return s;
}

at::Tensor conv_channels_last_input(const at::Tensor& x) {
  return x.movedim(1, -1).contiguous();
}

at::Tensor conv_empty_output(const ConvSetup& s, const at::TensorOptions& options, bool cpu_output) {
  return conv_like_empty_output(s.nsp, s.g.N, s.g.out, s.Cout, options, cpu_output);
}

}  // namespace torchquant
