// Argument checks and shapes of the int8 transposed convolution ops (pack_conv_transpose_weight,
// conv_transpose_int8), shared by the CPU and CUDA implementations so that both reject the same
// input with the same message.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/conv_shape.h"

namespace torchquant {

struct ConvTransposeSetup {
  // in: x's spatial sizes; out: the output's; k / stride / pad / dil as the float module's.
  // Held as a 3-d problem, as ConvGeometry says.
  ConvGeometry g;
  int64_t out_pad[3] = {0, 0, 0};
  int nsp = 0;             // spatial dimensions: 1, 2 or 3
  int64_t groups = 1;
  int64_t Cout = 0;        // output channels
  int64_t Cg = 0, Ng = 0;  // input / output channels per group
  int64_t khw = 1;         // taps per depth slice: k[1] * k[2]
  // The weight of one group and depth tap as a GEMM operand: [khw * Ng, Cg], its columns in
  // (channel block, kh, kw, channel in the block) order: blocks of 16 output channels when
  // Ng % 16 == 0 (a block's columns are whole panels, so tasks can split the channels), else
  // one block of Ng.
  int64_t cols() const { return khw * Ng; }
  int64_t channel_block() const { return Ng % 16 == 0 && Ng > 0 ? 16 : Ng; }
};

// The weight [Cin, Cout / groups, *kernel] of pack_conv_transpose_weight: int8, 3-5
// dimensions, groups dividing Cin, taps * Cin / groups within the int32 bound. No input sizes.
ConvTransposeSetup conv_transpose_weight_setup(const at::Tensor& w, int64_t groups);

// Checks x (int8/uint8 [N, Cin, *spatial]), w_col_sums (int32 [groups * taps * Cout / groups],
// from pack_conv_transpose_weight) and the geometry; computes the output size
//   out = (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1.
ConvTransposeSetup conv_transpose_setup(const at::Tensor& x, const at::Tensor& w_col_sums,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef output_padding,
                                        at::IntArrayRef dilation, int64_t groups);

// An empty output [N, Cout, *out] whose memory is channels-last ([N, *out, Cout] contiguous),
// as the CPU's huge-page-advised output when `cpu_output`.
at::Tensor conv_transpose_empty_output(const ConvTransposeSetup& s, const at::TensorOptions& options,
                                       bool cpu_output);

}  // namespace torchquant
