// Argument checks and layout helpers of the int8 convolution ops, shared by the CPU and CUDA
// implementations so that both reject the same input with the same message.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <vector>

#include "common/conv_shape.h"

namespace torchquant {

struct ConvSetup {
  ConvGeometry g;
  int nsp = 0;             // spatial dimensions: 1, 2 or 3
  int64_t groups = 1;
  int64_t Cout = 0;        // output channels
  int64_t Cg = 0, Ng = 0;  // input / output channels per group
  int64_t Kg = 0;          // GEMM depth per group: taps * Cg
  bool depthwise = false;  // Cg == 1 and Ng == 1: the depthwise kernels and packing
};

// Checks x (int8/uint8 [N, C, *spatial]), w_col_sums (int32 [Cout]) and the geometry; the
// error names the argument and the value.
ConvSetup conv_setup(const at::Tensor& x, const at::Tensor& w_col_sums,
                     at::IntArrayRef kernel_size, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// The weight [Cout, Cin / groups, *kernel] of pack_conv_weight: int8, 3-5 dimensions, groups
// dividing Cout, K within the int32 bound. Returns the setup with N = 0 and no input sizes.
ConvSetup conv_weight_setup(const at::Tensor& w, int64_t groups);

// The sizes {lead..., *kernel_size, tail...} of a packed weight whose shape carries the kernel's
// own sizes (depthwise [*kernel_size, C]; CUDA's [groups, *kernel_size, Cin / groups, Cout /
// groups]): a 3x1 and a 1x3 kernel, or a 3x3 and a 9, are then different shapes, which the ops
// compare with their kernel_size argument.
std::vector<int64_t> kernel_shaped(int nsp, const ConvGeometry& g, std::initializer_list<int64_t> lead,
                                   std::initializer_list<int64_t> tail);

// x as a contiguous [N, *spatial, C] tensor (a view when x is channels-last already).
at::Tensor conv_channels_last_input(const at::Tensor& x);

// An empty output [N, Cout, *out] whose memory is channels-last ([N, *out, Cout] contiguous),
// as the CPU's huge-page-advised output when `cpu_output`.
at::Tensor conv_empty_output(const ConvSetup& s, const at::TensorOptions& options, bool cpu_output);

// Shared with the transposed convolution's checks (conv_transpose_checks.cpp).

// How the messages name a convolution-like op.
struct ConvLikeNames {
  const char* fn;         // torch's function, before "1d": "conv"
  const char* variants;   // its 1-d / 2-d / 3-d functions: "conv1d, conv2d, conv3d"
  const char* op;         // the operation: "convolution"
  const char* packer;     // the op packing the weight: "pack_conv_weight"
  const char* weight;     // the weight's layout: "conv weight [Cout, Cin / groups, *kernel_size]"
};

// A list argument of nsp values; one value is repeated (as torch's conv functions allow). Each
// must be >= min. `op` names the operation in the message ("convolution").
std::vector<int64_t> conv_list_arg(at::IntArrayRef v, int nsp, const char* name, int64_t min,
                                   const char* op);

// The checks of a packing op's weight: int8, 3-5 dimensions, groups >= 1. Sets g.k from the
// weight's kernel sizes; returns the number of spatial dimensions.
int conv_like_weight_checks(const at::Tensor& w, int64_t groups, const ConvLikeNames& names,
                            ConvGeometry& g);

// The checks of an op's x, geometry lists, groups and w_col_sums, in this order: x int8 / uint8
// [N, C, *spatial] with one spatial dimension per kernel_size element (1 to 3), kernel_size /
// stride / padding / dilation lists of as many values, groups >= 1, w_col_sums a contiguous 1-D
// int32 tensor on x's device, groups dividing C. Sets g's N, C, in, k, stride, pad and dil;
// returns the number of spatial dimensions.
int conv_like_input_checks(const at::Tensor& x, const at::Tensor& w_col_sums,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           const ConvLikeNames& names, ConvGeometry& g);

// w_packed: a contiguous int8 tensor on x's device; `packer` names the op that makes it. Its
// shape is the backend's to check.
void check_w_packed(const at::Tensor& x, const at::Tensor& w_packed, const char* packer);

// The empty channels-last output of an nsp-d convolution-like op: sizes [N, Cout, *out] where
// out[3 - nsp ..] are the spatial sizes (ConvGeometry's 3-d convention).
at::Tensor conv_like_empty_output(int nsp, int64_t N, const int64_t* out, int64_t Cout,
                                  const at::TensorOptions& options, bool cpu_output);

}  // namespace torchquant
