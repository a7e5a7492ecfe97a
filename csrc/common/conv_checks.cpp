#include "common/conv_checks.h"

#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>

#include <vector>

#include "common/checks.h"
#include "cpu/alloc.h"

namespace torchquant {

namespace {

constexpr ConvLikeNames kConvNames{"conv", "conv1d, conv2d, conv3d", "convolution", "pack_conv_weight",
                                   "conv weight [Cout, Cin / groups, *kernel_size]"};

void check_w_col_sums(const at::Tensor& x, const at::Tensor& w_col_sums, const char* packer) {
  TORCH_CHECK(w_col_sums.defined(), "argument 'w_col_sums' must be a tensor, got None");
  check_same_device(x, "x", w_col_sums, "w_col_sums");
  TORCH_CHECK(w_col_sums.scalar_type() == at::kInt && w_col_sums.dim() == 1 &&
                  w_col_sums.is_contiguous(),
              "argument 'w_col_sums' must be a contiguous 1-D int32 tensor (from ", packer,
              "), got dtype ", w_col_sums.scalar_type(), " and shape ", w_col_sums.sizes());
}

}  // namespace

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

void check_w_packed(const at::Tensor& x, const at::Tensor& w_packed, const char* packer) {
  TORCH_CHECK(w_packed.defined(), "argument 'w_packed' must be a tensor, got None");
  check_same_device(x, "x", w_packed, "w_packed");
  TORCH_CHECK(w_packed.scalar_type() == at::kChar && w_packed.is_contiguous(),
              "argument 'w_packed' must be a contiguous int8 tensor from ", packer, ", got dtype ",
              w_packed.scalar_type());
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

int conv_like_weight_checks(const at::Tensor& w, int64_t groups, const ConvLikeNames& names,
                            ConvGeometry& g) {
  TORCH_CHECK(w.defined(), "argument 'w' must be a tensor, got None");
  TORCH_CHECK(w.scalar_type() == at::kChar, "argument 'w' must be an int8 tensor, got dtype ",
              w.scalar_type());
  TORCH_CHECK(w.dim() >= 3 && w.dim() <= 5, "argument 'w' must be a 3-D, 4-D or 5-D ", names.weight,
              ", got shape ", w.sizes());
  TORCH_CHECK(groups >= 1, "argument 'groups' must be >= 1, got ", groups);
  const int nsp = static_cast<int>(w.dim() - 2);
  for (int d = 0; d < nsp; ++d) {
    TORCH_CHECK(w.size(2 + d) >= 1, "argument 'w' must have kernel sizes >= 1, got shape ", w.sizes());
    g.k[3 - nsp + d] = w.size(2 + d);
  }
  return nsp;
}

int conv_like_input_checks(const at::Tensor& x, const at::Tensor& w_col_sums,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           const ConvLikeNames& names, ConvGeometry& g) {
  check_int8_input(x, "x");
  const int64_t nk = static_cast<int64_t>(kernel_size.size());
  TORCH_CHECK(nk >= 1 && nk <= 3, "argument 'kernel_size' must have 1, 2 or 3 elements (",
              names.variants, "), got ", kernel_size);
  const int nsp = static_cast<int>(nk);
  TORCH_CHECK(x.dim() == nk + 2, "Expected ", nk + 2, "D (batched) input to ", names.fn, nk,
              "d (argument 'x' [N, C, *spatial]), but got input of size: ", x.sizes());
  const auto ks = conv_list_arg(kernel_size, nsp, "kernel_size", 1, names.op);
  const auto st = conv_list_arg(stride, nsp, "stride", 1, names.op);
  const auto pd = conv_list_arg(padding, nsp, "padding", 0, names.op);
  const auto dl = conv_list_arg(dilation, nsp, "dilation", 1, names.op);
  TORCH_CHECK(groups >= 1, "argument 'groups' must be >= 1, got ", groups);
  check_w_col_sums(x, w_col_sums, names.packer);
  g.N = x.size(0);
  g.C = x.size(1);
  TORCH_CHECK(g.C % groups == 0, "argument 'groups' (", groups,
              ") must divide the input channels of 'x' (", g.C, ")");
  int64_t taps = 1;
  for (int d = 0; d < nsp; ++d) {
    const int e = 3 - nsp + d;
    g.in[e] = x.size(2 + d);
    g.k[e] = ks[d];
    g.stride[e] = st[d];
    g.pad[e] = pd[d];
    g.dil[e] = dl[d];
    // The shape arithmetic is int64: a product past it (signed overflow) would wrap.
    TORCH_CHECK(!c10::mul_overflows(taps, ks[d], &taps), "argument 'kernel_size' must hold "
                "fewer than 2^63 taps in all, got ", kernel_size);
  }
  return nsp;
}

ConvSetup conv_weight_setup(const at::Tensor& w, int64_t groups) {
  ConvSetup s;
  s.nsp = conv_like_weight_checks(w, groups, kConvNames, s.g);
  s.groups = groups;
  s.Cout = w.size(0);
  TORCH_CHECK(s.Cout % groups == 0, "argument 'groups' (", groups,
              ") must divide the output channels of 'w' (", s.Cout, ")");
  s.Cg = w.size(1);
  s.Ng = s.Cout / groups;
  s.Kg = s.g.taps() * s.Cg;
  check_k_bound(s.Kg, "w");
  s.depthwise = s.Cg == 1 && s.Ng == 1;
  return s;
}

ConvSetup conv_setup(const at::Tensor& x, const at::Tensor& w_col_sums,
                     at::IntArrayRef kernel_size, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  ConvSetup s;
  s.nsp = conv_like_input_checks(x, w_col_sums, kernel_size, stride, padding, dilation, groups,
                                 kConvNames, s.g);
  s.groups = groups;
  s.Cout = w_col_sums.size(0);
  TORCH_CHECK(s.Cout % groups == 0, "argument 'groups' (", groups,
              ") must divide the output channels (", s.Cout, ", the size of 'w_col_sums')");
  s.Cg = s.g.C / groups;
  s.Ng = s.Cout / groups;
  for (int d = 0; d < s.nsp; ++d) {
    const int e = 3 - s.nsp + d;
    // dil * (k - 1) + 1 and in + 2 * pad, in int64: values past it are errors, not wrapped
    // sizes (which gave outputs of made-up sizes, and out-of-bounds reads).
    int64_t span = 0, padded = 0;
    TORCH_CHECK(!c10::mul_overflows(s.g.dil[e], s.g.k[e] - 1, &span) &&
                    !c10::add_overflows(span, int64_t{1}, &span),
                "argument 'dilation' is too large: the dilated kernel (dilation ", s.g.dil[e],
                ", kernel size ", s.g.k[e], ") overflows int64 in spatial dimension ", d,
                ", got dilation=", dilation, " and kernel_size=", kernel_size);
    TORCH_CHECK(!c10::mul_overflows(s.g.pad[e], int64_t{2}, &padded) &&
                    !c10::add_overflows(padded, s.g.in[e], &padded),
                "argument 'padding' is too large: the padded input overflows int64 in spatial "
                "dimension ", d, ", got padding=", padding);
    TORCH_CHECK(padded >= span, "the padded input of 'x' (size ", padded, " in spatial dimension ",
                d, ") is smaller than the dilated kernel (size ", span, ")");
    s.g.out[e] = (padded - span) / s.g.stride[e] + 1;
  }
  TORCH_CHECK(!c10::mul_overflows(s.g.taps(), s.Cg, &s.Kg), "the inner dimension K of 'x' (",
              s.g.taps(), " kernel taps times ", s.Cg, " channels per group) is past the largest K (",
              kMaxK, ")");
  check_k_bound(s.Kg, "x");
  s.depthwise = s.Cg == 1 && s.Ng == 1;
  return s;
}

std::vector<int64_t> kernel_shaped(int nsp, const ConvGeometry& g, std::initializer_list<int64_t> lead,
                                   std::initializer_list<int64_t> tail) {
  std::vector<int64_t> sizes(lead);
  for (int d = 0; d < nsp; ++d) sizes.push_back(g.k[3 - nsp + d]);
  sizes.insert(sizes.end(), tail);
  return sizes;
}

at::Tensor conv_channels_last_input(const at::Tensor& x) {
  return x.movedim(1, -1).contiguous();
}

at::Tensor conv_empty_output(const ConvSetup& s, const at::TensorOptions& options, bool cpu_output) {
  return conv_like_empty_output(s.nsp, s.g.N, s.g.out, s.Cout, options, cpu_output);
}

}  // namespace torchquant
