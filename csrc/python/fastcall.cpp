// Typed Python entry points into the torchquant ops called once per forward or per GEMM call:
// quantize, dequantize, int8_mm, linear_int8, linear_dynamic (the quantized modules and the
// public GEMM functions of python/torchquant/gemm.py use them), conv_int8 (the quantized
// convolutions), the int8 pooling ops (the float pooling modules on QTensors) and embedding_bag_rowwise (the quantized Embedding /
// EmbeddingBag).
//
// `torch.ops.torchquant.<op>(...)` reaches the dispatcher through torch's generic path: every
// call boxes its Python arguments into a stack of IValues against the schema and looks up the
// namespace by name, about 2 us per call on top of the op for the module-sized argument lists,
// more than a batch-1 Linear computes. These bindings take the same arguments already typed
// (pybind11 casters) and call the same registered op through a typed dispatcher handle, the
// way torch's own generated bindings call its built-in ops: every kernel the op has (CPU,
// CUDA, Meta, the Python fake kernel, autograd, dispatch modes) is reached exactly as through
// torch.ops; nothing is re-implemented here. What they skip is the Python-level
// __torch_function__ handling, so the callers (python/torchquant/_fastcall.py) use them only
// where that has nothing to do: outside torch.compile / torch.export tracing, with no torch
// function mode active, and with plain tensors.
//
// Built into the same library as the ops by setup.py; the CMake build (for C++ programs, no
// Python) leaves this directory out.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Exceptions.h>
#include <torch/extension.h>

#include <optional>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

template <typename Sig>
c10::TypedOperatorHandle<Sig> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// The signatures must match the schemas in csrc/torchquant.cpp exactly: typed() checks them
// at the first call and raises if they drift apart.
using QuantizeSig = Tensor(const Tensor&, const Tensor&, const Tensor&, std::optional<int64_t>,
                           int64_t, int64_t, at::ScalarType);
using DequantizeSig = Tensor(const Tensor&, const Tensor&, const Tensor&, std::optional<int64_t>,
                             std::optional<at::ScalarType>);
using LinearInt8Sig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                             const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                             const OptTensor&, bool, std::optional<at::ScalarType>);
using Int8MmSig = Tensor(const Tensor&, const Tensor&);
using LinearDynamicSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const OptTensor&, bool, bool);
using MaxPoolSig = Tensor(const Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                          at::IntArrayRef, bool);
using AvgPoolSig = Tensor(const Tensor&, const Tensor&, at::IntArrayRef, at::IntArrayRef,
                          at::IntArrayRef, bool, bool, std::optional<int64_t>);
using AdaptiveAvgPoolSig = Tensor(const Tensor&, const Tensor&, at::IntArrayRef);
using ConvInt8Sig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                           const Tensor&, const OptTensor&, at::IntArrayRef, at::IntArrayRef,
                           at::IntArrayRef, at::IntArrayRef, int64_t, const OptTensor&,
                           const OptTensor&, bool, std::optional<at::ScalarType>);
using EmbeddingBagSig = Tensor(const Tensor&, int64_t, int64_t, const Tensor&, const OptTensor&, int64_t,
                               const OptTensor&, bool, std::optional<int64_t>);

// Errors and warnings reach Python as through torch.ops: c10::ValueError as ValueError (and
// so on, by torch's translation), a Python exception raised inside (a dispatch mode, a Python
// kernel) as itself; a TORCH_WARN inside the op goes to c10's warning handler, as from
// torch.ops, which installs no Python warning handler (HANDLE_TH_ERRORS would install one, and
// turn the warning into a Python warning on this path only). The GIL is released around the
// op, as torch.ops releases it.
// With grad mode off (torch.no_grad, inference mode), a call skips the autograd and
// ADInplaceOrView keys, as under inference mode: none of these ops has an autograd kernel, and
// the fallback that stands in for one boxes the arguments to look for inputs that require grad,
// only to redispatch below itself when grad mode is off (0.1-0.2 us per call at batch 1). The
// kernels below autograd (the device's, the Python dispatch modes', the fake ones) are reached
// as before; with grad mode on, everything goes through autograd as from torch.ops.
struct BelowAutogradWithoutGrad {
  std::optional<c10::impl::ExcludeDispatchKeyGuard> guard;
  BelowAutogradWithoutGrad() {
    if (!at::GradMode::is_enabled()) guard.emplace(c10::autograd_dispatch_keyset_with_ADInplaceOrView);
  }
};

#define TQ_TRY try {
#define TQ_CATCH                                                    \
  }                                                                 \
  catch (pybind11::error_already_set&) {                            \
    throw;                                                          \
  }                                                                 \
  catch (pybind11::builtin_exception&) {                            \
    throw;                                                          \
  }                                                                 \
  catch (const std::exception&) {                                   \
    torch::translate_exception_to_python(std::current_exception()); \
    throw pybind11::error_already_set();                            \
  }
Tensor quantize(const Tensor& x, const Tensor& scale, const Tensor& zero_point,
                std::optional<int64_t> axis, int64_t qmin, int64_t qmax, at::ScalarType dtype) {
  TQ_TRY
  static const auto op = typed_op<QuantizeSig>("torchquant::quantize");
  pybind11::gil_scoped_release no_gil;
  const BelowAutogradWithoutGrad below;
  return op.call(x, scale, zero_point, axis, qmin, qmax, dtype);
  TQ_CATCH
}

Tensor dequantize(const Tensor& q, const Tensor& scale, const Tensor& zero_point,
                  std::optional<int64_t> axis, std::optional<at::ScalarType> out_dtype) {
  TQ_TRY
  static const auto op = typed_op<DequantizeSig>("torchquant::dequantize");
  pybind11::gil_scoped_release no_gil;
  const BelowAutogradWithoutGrad below;
  return op.call(q, scale, zero_point, axis, out_dtype);
  TQ_CATCH
}

Tensor int8_mm(const Tensor& a, const Tensor& b) {
  TQ_TRY
  static const auto op = typed_op<Int8MmSig>("torchquant::int8_mm");
  pybind11::gil_scoped_release no_gil;
  const BelowAutogradWithoutGrad below;
  return op.call(a, b);
  TQ_CATCH
}

Tensor linear_int8(const Tensor& x, const Tensor& x_scale, const Tensor& x_zero_point,
                   const Tensor& w_packed, const Tensor& w_col_sums, const Tensor& w_scale,
                   const OptTensor& bias, const OptTensor& out_scale,
                   const OptTensor& out_zero_point, bool relu,
                   std::optional<at::ScalarType> out_dtype) {
  TQ_TRY
  static const auto op = typed_op<LinearInt8Sig>("torchquant::linear_int8");
  pybind11::gil_scoped_release no_gil;
  const BelowAutogradWithoutGrad below;
  return op.call(x, x_scale, x_zero_point, w_packed, w_col_sums, w_scale, bias, out_scale,
                 out_zero_point, relu, out_dtype);
  TQ_CATCH
}

Tensor linear_dynamic(const Tensor& x, const Tensor& w_packed, const Tensor& w_col_sums,
                      const Tensor& w_scale, const OptTensor& bias, bool relu, bool reduce_range) {
  TQ_TRY
  static const auto op = typed_op<LinearDynamicSig>("torchquant::linear_dynamic");
  pybind11::gil_scoped_release no_gil;
  const BelowAutogradWithoutGrad below;
  return op.call(x, w_packed, w_col_sums, w_scale, bias, relu, reduce_range);
  TQ_CATCH
}

// What the quantized Conv1d/2d/3d (and ConvReLU) call once per forward: about twenty per
// ResNet-18 forward, where the boxed call's 2 us each are a few percent of a batch-1 image.
Tensor conv_int8(const Tensor& x, const Tensor& x_scale, const Tensor& x_zero_point,
                 const Tensor& w_packed, const Tensor& w_col_sums, const Tensor& w_scale,
                 const OptTensor& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                 const OptTensor& out_scale, const OptTensor& out_zero_point, bool relu,
                 std::optional<at::ScalarType> out_dtype) {
  TQ_TRY
  static const auto op = typed_op<ConvInt8Sig>("torchquant::conv_int8");
  pybind11::gil_scoped_release no_gil;
  const BelowAutogradWithoutGrad below;
  return op.call(x, x_scale, x_zero_point, w_packed, w_col_sums, w_scale, bias, kernel_size, stride,
                 padding, dilation, groups, out_scale, out_zero_point, relu, out_dtype);
  TQ_CATCH
}

// What the quantized Embedding / EmbeddingBag call once per forward.
Tensor embedding_bag_rowwise(const Tensor& packed, int64_t bits, int64_t embedding_dim, const Tensor& indices,
                             const OptTensor& offsets, int64_t mode, const OptTensor& per_sample_weights,
                             bool include_last_offset, std::optional<int64_t> padding_idx) {
  TQ_TRY
  static const auto op = typed_op<EmbeddingBagSig>("torchquant::embedding_bag_rowwise");
  pybind11::gil_scoped_release no_gil;
  const BelowAutogradWithoutGrad below;
  return op.call(packed, bits, embedding_dim, indices, offsets, mode, per_sample_weights, include_last_offset,
                 padding_idx);
  TQ_CATCH
}

// Pooling: what nn.MaxPool2d / nn.AdaptiveAvgPool2d on a QTensor call once per forward.
Tensor max_pool_int8(const Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  TQ_TRY
  static const auto op = typed_op<MaxPoolSig>("torchquant::max_pool_int8");
  pybind11::gil_scoped_release no_gil;
  const BelowAutogradWithoutGrad below;
  return op.call(x, kernel_size, stride, padding, dilation, ceil_mode);
  TQ_CATCH
}

Tensor avg_pool_int8(const Tensor& x, const Tensor& zero_point, at::IntArrayRef kernel_size,
                     at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                     bool count_include_pad, std::optional<int64_t> divisor_override) {
  TQ_TRY
  static const auto op = typed_op<AvgPoolSig>("torchquant::avg_pool_int8");
  pybind11::gil_scoped_release no_gil;
  const BelowAutogradWithoutGrad below;
  return op.call(x, zero_point, kernel_size, stride, padding, ceil_mode, count_include_pad,
                 divisor_override);
  TQ_CATCH
}

Tensor adaptive_avg_pool_int8(const Tensor& x, const Tensor& zero_point, at::IntArrayRef output_size) {
  TQ_TRY
  static const auto op = typed_op<AdaptiveAvgPoolSig>("torchquant::adaptive_avg_pool_int8");
  pybind11::gil_scoped_release no_gil;
  const BelowAutogradWithoutGrad below;
  return op.call(x, zero_point, output_size);
  TQ_CATCH
}

#undef TQ_TRY
#undef TQ_CATCH

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "torchquant's op library; typed entry points for the quantized modules' forward";
  namespace py = pybind11;
  m.def("quantize", &quantize, py::arg("x"), py::arg("scale"), py::arg("zero_point"),
        py::arg("axis").none(true), py::arg("qmin"), py::arg("qmax"), py::arg("dtype"));
  m.def("dequantize", &dequantize, py::arg("q"), py::arg("scale"), py::arg("zero_point"),
        py::arg("axis").none(true), py::arg("out_dtype").none(true));
  m.def("int8_mm", &int8_mm, py::arg("a"), py::arg("b"));
  m.def("linear_int8", &linear_int8, py::arg("x"), py::arg("x_scale"), py::arg("x_zero_point"),
        py::arg("w_packed"), py::arg("w_col_sums"), py::arg("w_scale"), py::arg("bias").none(true),
        py::arg("out_scale").none(true), py::arg("out_zero_point").none(true), py::arg("relu"),
        py::arg("out_dtype").none(true));
  m.def("linear_dynamic", &linear_dynamic, py::arg("x"), py::arg("w_packed"),
        py::arg("w_col_sums"), py::arg("w_scale"), py::arg("bias").none(true), py::arg("relu"),
        py::arg("reduce_range") = false);
  m.def("max_pool_int8", &max_pool_int8, py::arg("x"), py::arg("kernel_size"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("ceil_mode"));
  m.def("avg_pool_int8", &avg_pool_int8, py::arg("x"), py::arg("zero_point"), py::arg("kernel_size"),
        py::arg("stride"), py::arg("padding"), py::arg("ceil_mode"), py::arg("count_include_pad"),
        py::arg("divisor_override").none(true));
  m.def("embedding_bag_rowwise", &embedding_bag_rowwise, py::arg("packed"), py::arg("bits"),
        py::arg("embedding_dim"), py::arg("indices"), py::arg("offsets"), py::arg("mode"),
        py::arg("per_sample_weights"), py::arg("include_last_offset"), py::arg("padding_idx"));
  m.def("adaptive_avg_pool_int8", &adaptive_avg_pool_int8, py::arg("x"), py::arg("zero_point"),
        py::arg("output_size"));
  m.def("conv_int8", &conv_int8, py::arg("x"), py::arg("x_scale"), py::arg("x_zero_point"),
        py::arg("w_packed"), py::arg("w_col_sums"), py::arg("w_scale"), py::arg("bias").none(true),
        py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"), py::arg("out_scale").none(true), py::arg("out_zero_point").none(true),
        py::arg("relu"), py::arg("out_dtype").none(true));
}
