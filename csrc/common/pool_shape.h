// Argument checks and window geometry of the int8 pooling ops (max_pool_int8, avg_pool_int8,
// adaptive_avg_pool_int8), shared by the CPU and CUDA adapters.
//
// Every op is written for up to three spatial dimensions: the input is viewed as
// [N, C, D, H, W] (a 1-d pooling has D = H = 1, a 2-d one D = 1), and every window is a box
// whose taps along each dimension are separable. So the geometry is a table per dimension and
// output index: the first valid input index, the number of valid taps (padding excluded) and,
// for the averages, that dimension's factor of the divisor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <vector>

namespace torchquant {

enum class PoolKind : int { Max = 0, Avg = 1, Adaptive = 2 };

struct PoolGeometry {
  int64_t N = 0, C = 0;
  int64_t in[3] = {1, 1, 1};   // D, H, W
  int64_t out[3] = {1, 1, 1};  // OD, OH, OW
  int64_t step[3] = {1, 1, 1}; // distance between taps (max pooling's dilation)
  // The arguments the tables come from (the CUDA kernel recomputes the windows from them).
  int64_t kernel[3] = {1, 1, 1}, stride[3] = {1, 1, 1}, pad[3] = {0, 0, 0};
  PoolKind kind = PoolKind::Max;
  bool count_include_pad = true;
  // Per dimension j, per output index o: first valid input index, valid tap count, divisor
  // factor (averages; count_include_pad counts the covered padding too).
  // (Pointers into `tables`, one allocation.)
  const int32_t *first[3] = {}, *taps[3] = {}, *div[3] = {};
  std::vector<int32_t> tables;
  int64_t divisor_override = 0;  // 0: none
  int64_t max_taps = 0;          // the largest window's valid tap count
  bool channels_last = false;    // the kernels read and write C innermost
};

// The input (batched) in a dense layout (channels-last when x is, else contiguous; a copy only
// for other strides), with the geometry and the output's shape. Not copyable: the geometry's
// table pointers point into its own vector (a move keeps them valid).
// `name` is the op's name for the error messages ("max_pool2d", ...).
struct PoolProblem {
  at::Tensor x5;                     // x (batched), dense in the layout the kernels read
  PoolGeometry g;
  std::vector<int64_t> out_shape;    // the output's shape, in x's dimensions
  bool out_channels_last = false;    // the output's allocation (x's memory format)
  bool unbatched = false;
  PoolProblem() = default;
  PoolProblem(PoolProblem&&) = default;
  PoolProblem(const PoolProblem&) = delete;
};

PoolProblem pool_problem(const at::Tensor& x, PoolKind kind, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, bool ceil_mode, bool count_include_pad,
                         std::optional<int64_t> divisor_override, at::IntArrayRef output_size);

// The output tensor for a problem: [N, C, OD, OH, OW] in the input's layout.
at::Tensor pool_output5(const PoolProblem& p);
// The 5-d output in the shape of x's dimensions (a view).
at::Tensor pool_result(const PoolProblem& p, const at::Tensor& out5);

// Reads and checks the one-element integer zero_point of an average pool for data of `dtype`.
// On the CPU it returns the value (inside the dtype's range); on a device it returns 0 and
// sets `device_zp` to an int32 [1] tensor there (the kernel clamps it; no sync).
int32_t pool_zero_point(const at::Tensor& x, const at::Tensor& zero_point, at::Tensor* device_zp);

}  // namespace torchquant
