// C++ signatures of every torchquant op, as the CPU (and device-generic) implementations
// define them. The schemas live in torchquant.cpp; each backend file registers its own
// functions, and the CUDA ones (cuda/*.cu) have the same signatures with a _cuda suffix.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <tuple>

namespace torchquant {

using at::Tensor;

// ---- quantize / dequantize / fake-quantize (cpu/quantize.cpp, cuda/quantize.cu) ----
Tensor quantize_cpu(const Tensor& x, const Tensor& scale, const Tensor& zero_point,
                std::optional<int64_t> axis, int64_t qmin, int64_t qmax, at::ScalarType dtype);
Tensor dequantize_cpu(const Tensor& q, const Tensor& scale, const Tensor& zero_point,
                  std::optional<int64_t> axis, std::optional<at::ScalarType> out_dtype);
Tensor fake_quantize_cpu(const Tensor& x, const Tensor& scale, const Tensor& zero_point,
                     std::optional<int64_t> axis, int64_t qmin, int64_t qmax);
Tensor fake_quantize_backward_cpu(const Tensor& grad, const Tensor& x, const Tensor& scale,
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

// ---- int8 GEMM (cpu/gemm.cpp, cuda/gemm.cu) ----
Tensor int8_mm_cpu(const Tensor& a, const Tensor& b);
std::tuple<Tensor, Tensor> pack_weight_cpu(const Tensor& w);
Tensor linear_int8_cpu(const Tensor& x, const Tensor& x_scale, const Tensor& x_zero_point,
                       const Tensor& w_packed, const Tensor& w_col_sums, const Tensor& w_scale,
                       const std::optional<Tensor>& bias, const std::optional<Tensor>& out_scale,
                       const std::optional<Tensor>& out_zero_point, bool relu,
                       std::optional<at::ScalarType> out_dtype);
std::tuple<Tensor, Tensor, Tensor> quantize_rowwise_cpu(const Tensor& x, int64_t qmin,
                                                        int64_t qmax);
Tensor linear_dynamic_cpu(const Tensor& x, const Tensor& w_packed, const Tensor& w_col_sums,
                          const Tensor& w_scale, const std::optional<Tensor>& bias, bool relu,
                          bool reduce_range);

// ---- observers (cpu/observe.cpp; the *_generic versions serve every other device) ----
std::tuple<Tensor, Tensor> aminmax_cpu(const Tensor& x, std::optional<int64_t> axis);
void observe_minmax_cpu(const Tensor& running_min, const Tensor& running_max,
                        const Tensor& nonfinite_count, const Tensor& x,
                        std::optional<int64_t> axis, std::optional<double> averaging_constant);
void histogram_cpu(const Tensor& hist, const Tensor& min_val, const Tensor& max_val,
                   const Tensor& nonfinite_count, const Tensor& x, int64_t upsample_rate);
std::tuple<Tensor, Tensor> aminmax_generic(const Tensor& x, std::optional<int64_t> axis);
void observe_minmax_generic(const Tensor& running_min, const Tensor& running_max,
                            const Tensor& nonfinite_count, const Tensor& x,
                            std::optional<int64_t> axis, std::optional<double> averaging_constant);
void histogram_generic(const Tensor& hist, const Tensor& min_val, const Tensor& max_val,
                       const Tensor& nonfinite_count, const Tensor& x, int64_t upsample_rate);
Tensor histogram_rebin(const Tensor& hist, const Tensor& min_val, const Tensor& max_val,
                       const Tensor& new_min, const Tensor& new_max, int64_t upsample_rate);

// ---- conv (cpu/conv.cpp, cuda/conv.cu) ----
std::tuple<Tensor, Tensor> pack_conv_weight_cpu(const Tensor& w, int64_t groups);
Tensor conv_int8_cpu(const Tensor& x, const Tensor& x_scale, const Tensor& x_zero_point,
                     const Tensor& w_packed, const Tensor& w_col_sums, const Tensor& w_scale,
                     const std::optional<Tensor>& bias, at::IntArrayRef kernel_size,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                     int64_t groups, const std::optional<Tensor>& out_scale,
                     const std::optional<Tensor>& out_zero_point, bool relu,
                     std::optional<at::ScalarType> out_dtype);
// ---- elementwise (cpu/elementwise.cpp, cuda/elementwise.cu) ----
Tensor add_cpu(const Tensor& a, const Tensor& a_scale, const Tensor& a_zero_point, const Tensor& b,
               const Tensor& b_scale, const Tensor& b_zero_point, const Tensor& out_scale,
               const Tensor& out_zero_point, bool relu, std::optional<at::ScalarType> out_dtype);
Tensor mul_cpu(const Tensor& a, const Tensor& a_scale, const Tensor& a_zero_point, const Tensor& b,
               const Tensor& b_scale, const Tensor& b_zero_point, const Tensor& out_scale,
               const Tensor& out_zero_point, bool relu, std::optional<at::ScalarType> out_dtype);
Tensor add_scalar_cpu(const Tensor& a, const Tensor& a_scale, const Tensor& a_zero_point,
                      double other, const Tensor& out_scale, const Tensor& out_zero_point,
                      std::optional<at::ScalarType> out_dtype);
Tensor mul_scalar_cpu(const Tensor& a, const Tensor& a_scale, const Tensor& a_zero_point,
                      double other, const Tensor& out_scale, const Tensor& out_zero_point,
                      std::optional<at::ScalarType> out_dtype);
Tensor cat_cpu(at::TensorList tensors, at::TensorList scales, at::TensorList zero_points,
               int64_t dim, const Tensor& out_scale, const Tensor& out_zero_point,
               std::optional<at::ScalarType> out_dtype);
Tensor lookup_table_cpu(const Tensor& a, const Tensor& table);
// ---- sequence models (cpu/rnn.cpp, cuda/rnn.cu) ----
std::tuple<Tensor, Tensor> lstm_cell_update_cpu(const Tensor& igates, const Tensor& hgates,
                                                const Tensor& c);
Tensor gru_cell_update_cpu(const Tensor& igates, const Tensor& hgates, const Tensor& h);
// Whole layers, every device (rnn_layer.cpp).
std::tuple<Tensor, Tensor, Tensor> lstm_layer_dynamic(
    const Tensor& igates, const Tensor& h0, const Tensor& c0, const Tensor& hh_w,
    const Tensor& hh_col_sums, const Tensor& hh_scale, const std::optional<Tensor>& hh_bias,
    const std::optional<Tensor>& hr_w, const std::optional<Tensor>& hr_col_sums,
    const std::optional<Tensor>& hr_scale, bool reverse, bool reduce_range);
std::tuple<Tensor, Tensor> gru_layer_dynamic(const Tensor& igates, const Tensor& h0,
                                             const Tensor& hh_w, const Tensor& hh_col_sums,
                                             const Tensor& hh_scale,
                                             const std::optional<Tensor>& hh_bias, bool reverse,
                                             bool reduce_range);
// The argument checks both devices share; returns (B, H).
std::pair<int64_t, int64_t> check_cell_update_args(const Tensor& igates, const Tensor& hgates,
                                                   const Tensor& state, int64_t gates,
                                                   const char* state_name, const char* op);

// ---- embedding (cpu/embedding.cpp, cuda/embedding.cu) ----
// Bytes of one packed row: the values (8 or 4 bits each) padded to 4 bytes, then scale and
// zero point (float32).
int64_t embedding_row_stride(int64_t dim, int64_t bits);
struct EmbeddingBagArgs {
  int64_t N = 0, row_stride = 0, bags = 0, n = 0, padding_idx = -1;
};
// The checks of the arguments' types, shapes and devices that both devices share.
EmbeddingBagArgs check_embedding_bag_args(const Tensor& packed, int64_t bits, int64_t dim,
                                          const Tensor& indices,
                                          const std::optional<Tensor>& offsets, int64_t mode,
                                          const std::optional<Tensor>& per_sample_weights,
                                          bool include_last_offset,
                                          std::optional<int64_t> padding_idx);
// The checks of the index and offset values (host memory): every index in [0, N), offsets[0]
// == 0, non-decreasing, the last <= n. The two halves apart: the indices, the offsets.
void check_embedding_bag_indices(const int64_t* idx, int64_t n, int64_t N);
void check_embedding_bag_offsets(const int64_t* off, int64_t n_off, int64_t n);
void check_embedding_bag_values(const int64_t* idx, int64_t n, const int64_t* off, int64_t n_off,
                                int64_t N);
Tensor embedding_bag_rowwise_cpu(const Tensor& packed, int64_t bits, int64_t embedding_dim,
                                 const Tensor& indices, const std::optional<Tensor>& offsets,
                                 int64_t mode, const std::optional<Tensor>& per_sample_weights,
                                 bool include_last_offset, std::optional<int64_t> padding_idx);
// ---- int4 (cpu/int4.cpp, cuda/int4.cu) ----
int64_t check_int4_format(const Tensor& qweight, const Tensor& scale, const Tensor& zero_point,
                          int64_t in_features, int64_t group_size);
void check_int4_scale_values(const Tensor& scale, const float* v, int64_t G);
std::tuple<Tensor, Tensor, Tensor> int4_pack_weight_cpu(const Tensor& qweight, const Tensor& scale,
                                                        const Tensor& zero_point,
                                                        int64_t in_features, int64_t group_size);
Tensor linear_int4_cpu(const Tensor& x, const Tensor& w_packed, const Tensor& w_qp,
                       const Tensor& w_scale, const std::optional<Tensor>& bias,
                       int64_t in_features, int64_t out_features, int64_t group_size);
// ---- conv transpose (cpu/conv_transpose.cpp, cuda/conv_transpose.cu) ----
std::tuple<Tensor, Tensor> pack_conv_transpose_weight_cpu(const Tensor& w, int64_t groups);
Tensor conv_transpose_int8_cpu(const Tensor& x, const Tensor& x_scale, const Tensor& x_zero_point,
                               const Tensor& w_packed, const Tensor& w_col_sums,
                               const Tensor& w_scale, const std::optional<Tensor>& bias,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef output_padding,
                               at::IntArrayRef dilation, int64_t groups,
                               const std::optional<Tensor>& out_scale,
                               const std::optional<Tensor>& out_zero_point, bool relu,
                               std::optional<at::ScalarType> out_dtype);
// ---- pooling (cpu/pool.cpp, cuda/pool.cu) ----
Tensor max_pool_int8_cpu(const Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode);
Tensor avg_pool_int8_cpu(const Tensor& x, const Tensor& zero_point, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                         bool count_include_pad, std::optional<int64_t> divisor_override);
Tensor adaptive_avg_pool_int8_cpu(const Tensor& x, const Tensor& zero_point,
                                  at::IntArrayRef output_size);

}  // namespace torchquant
