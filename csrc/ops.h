// C++ signatures of every torchquant op. The schemas live in torchquant.cpp; each backend
// file implements the functions it registers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <tuple>

namespace torchquant {

using at::Tensor;

// ---- quantize / dequantize / fake-quantize (cpu/quantize.cpp, cuda/quantize.cu) ----
Tensor quantize(const Tensor& x, const Tensor& scale, const Tensor& zero_point,
                std::optional<int64_t> axis, int64_t qmin, int64_t qmax, at::ScalarType dtype);
Tensor dequantize(const Tensor& q, const Tensor& scale, const Tensor& zero_point,
                  std::optional<int64_t> axis, std::optional<at::ScalarType> out_dtype);
Tensor fake_quantize(const Tensor& x, const Tensor& scale, const Tensor& zero_point,
                     std::optional<int64_t> axis, int64_t qmin, int64_t qmax);
Tensor fake_quantize_backward(const Tensor& grad, const Tensor& x, const Tensor& scale,
                              const Tensor& zero_point, std::optional<int64_t> axis,
                              int64_t qmin, int64_t qmax);

// ---- device-generic ops built from ATen ops (composite.cpp) ----
Tensor fake_quantize_learnable(const Tensor& x, const Tensor& scale, const Tensor& zero_point,
                               std::optional<int64_t> axis, int64_t qmin, int64_t qmax,
                               double grad_factor);
std::tuple<Tensor, Tensor, Tensor> fake_quantize_learnable_backward(
    const Tensor& grad, const Tensor& x, const Tensor& scale, const Tensor& zero_point,
    std::optional<int64_t> axis, int64_t qmin, int64_t qmax, double grad_factor);
std::tuple<Tensor, Tensor> choose_qparams(const Tensor& min_val, const Tensor& max_val,
                                          int64_t qmin, int64_t qmax, bool symmetric,
                                          double eps, int64_t symmetric_zero_point);

// ---- utilities (torchquant.cpp) ----
std::string cpu_isa_op();
void set_cpu_isa_op(const std::string& isa);
std::string build_info();

}  // namespace torchquant
