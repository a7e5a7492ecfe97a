// Argument readers of the CPU int8 GEMM ops, shared by linear_int8 (cpu/gemm.cpp) and conv_int8
// (cpu/conv.cpp): one definition, so their checks and error messages cannot drift apart.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "cpu/gemm_kernels.h"

namespace torchquant {
namespace cpu {

void check_cpu(const at::Tensor& t, const char* name);
// One per-tensor scale (floating point, finite, > 0) or zero point (integer, in [lo, hi]).
float read_scale(const at::Tensor& t, const char* name);
int32_t read_zero_point(const at::Tensor& t, const char* name, int64_t lo, int64_t hi);
// n floats (one per output channel) as a contiguous float32 tensor.
at::Tensor per_channel_float(const at::Tensor& t, const char* name, int64_t n);
// The epilogue's output: checks out_dtype (default float32) and, for int8 / uint8, reads
// out_scale and out_zero_point into p. Returns the output dtype.
at::ScalarType read_gemm_output(GemmProblem& p, const std::optional<at::Tensor>& out_scale,
                                const std::optional<at::Tensor>& out_zero_point,
                                std::optional<at::ScalarType> out_dtype);
// p.nan_free (see GemmProblem) from p's output kind, out_inv_scale and its n biases.
void set_nan_free(GemmProblem& p, int64_t n);

}  // namespace cpu
}  // namespace torchquant
