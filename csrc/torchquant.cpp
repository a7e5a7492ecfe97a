// The one registry of torchquant ops: every schema is here, in one TORCH_LIBRARY block.
// Backends add kernels with TORCH_LIBRARY_IMPL in their own files (cpu/, cuda/,
// composite.cpp); fake (meta) kernels and autograd live in python/torchquant/_ops.py.
#include <ATen/core/LegacyTypeDispatch.h>  // at::AutoDispatchBelow*: not reached through the others under C++17
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "ops.h"

#ifndef TORCHQUANT_VERSION
#define TORCHQUANT_VERSION "unknown"
#endif

namespace torchquant {

std::string cpu_isa_op() { return cpu_isa_name(cpu_isa()); }
void set_cpu_isa_op(const std::string& isa) { set_cpu_isa(isa); }

std::string build_info() {
  std::string info = std::string("torchquant ") + TORCHQUANT_VERSION;
#ifdef TORCHQUANT_WITH_CUDA
  info += " cuda=yes";
#else
  info += " cuda=no";
#endif
  info += std::string(" cpu_isa_detected=") + cpu_isa_name(cpu_isa_detected());
  return info;
}

TORCH_LIBRARY(torchquant, m) {
  // ---- utilities (plain functions, no tensors) ----
  // The CPU kernel variant in use: "scalar", "avx2", "avxvnni", "avx512vnni" or "amx".
  m.def("cpu_isa() -> str", &cpu_isa_op);
  // Forces a CPU kernel variant ("auto" returns to CPUID detection).
  m.def("set_cpu_isa(str isa) -> ()", &set_cpu_isa_op);
  m.def("build_info() -> str", &build_info);

  // ---- quantize / dequantize ----
  // float -> int8/uint8: q = clamp(nearbyint(x / scale) + zero_point, qmin, qmax).
  // axis=None: per tensor (scale and zero_point hold one element); else one per x.size(axis).
  m.def("quantize(Tensor x, Tensor scale, Tensor zero_point, int? axis, int qmin, int qmax, "
        "ScalarType dtype) -> Tensor");
  // int8/uint8 -> float: (q - zero_point) * scale; out_dtype defaults to float32.
  m.def("dequantize(Tensor q, Tensor scale, Tensor zero_point, int? axis, "
        "ScalarType? out_dtype=None) -> Tensor");

  // ---- fake quantize (QAT) ----
  // quantize then dequantize in float; autograd: straight-through inside [qmin, qmax].
  m.def("fake_quantize(Tensor x, Tensor scale, Tensor zero_point, int? axis, int qmin, "
        "int qmax) -> Tensor");
  // grad where the rounded value lies in [qmin, qmax], 0 elsewhere.
  m.def("fake_quantize_backward(Tensor grad, Tensor x, Tensor scale, Tensor zero_point, "
        "int? axis, int qmin, int qmax) -> Tensor");
  // Learnable scale and zero point (LSQ); zero_point is a float tensor rounded in the forward.
  m.def("fake_quantize_learnable(Tensor x, Tensor scale, Tensor zero_point, int? axis, "
        "int qmin, int qmax, float grad_factor=1.0) -> Tensor");
  // Returns (grad_x, grad_scale, grad_zero_point), shaped like x, scale, zero_point.
  m.def("fake_quantize_learnable_backward(Tensor grad, Tensor x, Tensor scale, "
        "Tensor zero_point, int? axis, int qmin, int qmax, float grad_factor=1.0) "
        "-> (Tensor, Tensor, Tensor)");

  // ---- qparams ----
  // (scale float32, zero_point int32) from observed min/max, with torch.ao's formulas.
  m.def("choose_qparams(Tensor min_val, Tensor max_val, int qmin, int qmax, "
        "bool symmetric=False, float eps=1.1920928955078125e-07, int symmetric_zero_point=0) "
        "-> (Tensor, Tensor)");

  // ---- int8 GEMM (cpu/gemm.cpp, cuda/gemm.cu) ----
  // a: [M, K] int8, b: [K, N] int8 -> [M, N] int32, exact (torch._int_mm semantics, any shape).
  m.def("int8_mm(Tensor a, Tensor b) -> Tensor");
  // w: [N, K] int8 (nn.Linear layout) -> (packed, col_sums int32 [N]); the packed layout is the
  // kernel's for w's device. col_sums[n] = sum_k w[n, k], for zero-point correction.
  m.def("pack_weight(Tensor w) -> (Tensor, Tensor)");
  // Static int8 Linear. x: [..., K] int8/uint8; x_scale/x_zero_point hold 1 element (per
  // tensor) or one per row of x (per row, rows = product of x's leading dimensions); weights
  // symmetric per output channel (w_scale [N]); bias float [N]. out_dtype int8/uint8
  // requantizes with out_scale/out_zero_point; float32 (default) dequantizes.
  m.def("linear_int8(Tensor x, Tensor x_scale, Tensor x_zero_point, Tensor w_packed, "
        "Tensor w_col_sums, Tensor w_scale, Tensor? bias, Tensor? out_scale, "
        "Tensor? out_zero_point, bool relu=False, ScalarType? out_dtype=None) -> Tensor");
  // Per-row affine quantization of x [..., K]: returns (q int8, scale float32 [rows],
  // zero_point int32 [rows]).
  m.def("quantize_rowwise(Tensor x, int qmin=-128, int qmax=127) -> (Tensor, Tensor, Tensor)");
  // Dynamic int8 Linear: float x, per-row quantization fused in, float32 out. The rows are
  // affine int8 codes in [-128, 127], or with reduce_range 7-bit codes in [0, 127] (torch.ao's
  // x86 dynamic range: the multiply without VNNI does not saturate on them).
  m.def("linear_dynamic(Tensor x, Tensor w_packed, Tensor w_col_sums, Tensor w_scale, "
        "Tensor? bias, bool relu=False, bool reduce_range=False) -> Tensor");

  // ---- observers (cpu/observe.cpp, cuda/observe.cu) ----
  // NaN-skipping (min, max) of x: per tensor (axis=None, 0-dim results) or per channel of
  // axis ([C] results), float32. +-Inf count. Nothing to reduce (empty, all NaN) gives
  // (+inf, -inf), the identities of min and max.
  m.def("aminmax(Tensor x, int? axis=None) -> (Tensor, Tensor)");
  // An observer's running update, one pass over x, no host sync. NaN and +-Inf are left out
  // of the range and counted: nonfinite_count (int64 [2]) += (#NaN, #Inf). running_min/max
  // (float32, 1 or C elements) equal to (+inf, -inf) mean "nothing seen": the first
  // observation sets them. averaging_constant=None: running min/max; c in [0, 1]:
  // torch.ao's moving average running + c * (current - running). A channel with nothing
  // finite in x is left unchanged.
  m.def("observe_minmax_(Tensor(a!) running_min, Tensor(b!) running_max, "
        "Tensor(c!) nonfinite_count, Tensor x, int? axis=None, float? averaging_constant=None) "
        "-> ()");
  // Adds the finite values of x to hist (float32 [bins]) over [min_val, max_val] (float32,
  // one element each; (+inf, -inf) = empty). The range grows to cover x as torch.ao's
  // HistogramObserver grows it: the old counts move with histogram_rebin. NaN / +-Inf are
  // counted into nonfinite_count and left out.
  m.def("histogram_(Tensor(a!) hist, Tensor(b!) min_val, Tensor(c!) max_val, "
        "Tensor(d!) nonfinite_count, Tensor x, int upsample_rate=16) -> ()");
  // hist over [min_val, max_val] moved onto the same number of bins over [new_min, new_max]
  // (which must contain it): each bin split in upsample_rate parts whose centres are re-binned.
  m.def("histogram_rebin(Tensor hist, Tensor min_val, Tensor max_val, Tensor new_min, "
        "Tensor new_max, int upsample_rate=16) -> Tensor");

  // ---- conv ----
  // w: [Cout, Cin / groups, *kernel_size] int8 (1, 2 or 3 spatial dimensions), symmetric per
  // output channel -> (packed, col_sums int32 [Cout]); col_sums[n] = sum of w[n]. The packed
  // layout is the kernels' for w's device: depthwise weights (Cin / groups = 1 and
  // Cout = groups) [*kernel_size, Cout]; others on the CPU 1-D, the panels [groups,
  // ceil(Cout/groups/16), K, 16] (K = taps * Cin / groups, taps-major) and a 32-byte record of the
  // weight's shape (cpu/packed_record.h), on CUDA [groups, *kernel_size, Cin / groups, Cout / groups].
  m.def("pack_conv_weight(Tensor w, int groups=1) -> (Tensor, Tensor)");
  // Static int8 convolution (zero padding: padded positions hold x_zero_point). x: int8/uint8
  // [N, Cin, *spatial] in any layout (channels-last is read in place), per-tensor qparams;
  // weights from pack_conv_weight with per-channel w_scale [Cout]; bias float [Cout]. One or
  // len(kernel_size) values for stride / padding / dilation. The epilogue is linear_int8's:
  // out_dtype int8/uint8 requantizes with out_scale/out_zero_point, float32 (default),
  // bfloat16, float16 dequantize. The output [N, Cout, *out] is channels-last in memory.
  m.def("conv_int8(Tensor x, Tensor x_scale, Tensor x_zero_point, Tensor w_packed, "
        "Tensor w_col_sums, Tensor w_scale, Tensor? bias, int[] kernel_size, int[] stride, "
        "int[] padding, int[] dilation, int groups, Tensor? out_scale, Tensor? out_zero_point, "
        "bool relu=False, ScalarType? out_dtype=None) -> Tensor");
  // ---- elementwise (cpu/elementwise.cpp, cuda/elementwise.cu) ----
  // Quantized elementwise ops with requantize. Inputs int8/uint8 with per-tensor qparams
  // (scale float, zero_point integer, one element each); the output is requantized with
  // out_scale/out_zero_point over the full range of out_dtype (default: the first input's
  // dtype). Arithmetic (float32, docs/quantization.md "Elementwise ops"):
  //   add: (a - a_zp) * a_scale + (b - b_zp) * b_scale, then ReLU if relu; a and b broadcast.
  //   mul: float((a - a_zp) * (b - b_zp)) * float32(a_scale * b_scale), then ReLU if relu.
  m.def("add(Tensor a, Tensor a_scale, Tensor a_zero_point, Tensor b, Tensor b_scale, "
        "Tensor b_zero_point, Tensor out_scale, Tensor out_zero_point, bool relu=False, "
        "ScalarType? out_dtype=None) -> Tensor");
  m.def("mul(Tensor a, Tensor a_scale, Tensor a_zero_point, Tensor b, Tensor b_scale, "
        "Tensor b_zero_point, Tensor out_scale, Tensor out_zero_point, bool relu=False, "
        "ScalarType? out_dtype=None) -> Tensor");
  //   add_scalar: (a - a_zp) * a_scale + float32(other).
  m.def("add_scalar(Tensor a, Tensor a_scale, Tensor a_zero_point, float other, Tensor out_scale, "
        "Tensor out_zero_point, ScalarType? out_dtype=None) -> Tensor");
  //   mul_scalar: (a - a_zp) * float32(a_scale * float32(other)).
  m.def("mul_scalar(Tensor a, Tensor a_scale, Tensor a_zero_point, float other, Tensor out_scale, "
        "Tensor out_zero_point, ScalarType? out_dtype=None) -> Tensor");
  //   cat: each input requantized, (x - zp_i) * scale_i, then concatenated along dim (inputs
  //   whose qparams and dtype equal the output's are copied: the same values).
  m.def("cat(Tensor[] tensors, Tensor[] scales, Tensor[] zero_points, int dim, Tensor out_scale, "
        "Tensor out_zero_point, ScalarType? out_dtype=None) -> Tensor");
  //   lookup_table: any elementwise function of one int8 / uint8 tensor, as a table of its 256
  //   results: out[i] = table[a[i] - qmin(a)] (qmin -128 for int8, 0 for uint8); table int8 or
  //   uint8 [256] on a's device, whose dtype is the output's; the output keeps a's memory format.
  m.def("lookup_table(Tensor a, Tensor table) -> Tensor");
  // ---- sequence models (cpu/rnn.cpp, cuda/rnn.cu) ----
  // One LSTM step's gate nonlinearities and state update, fused. igates / hgates: [B, 4H]
  // float32 pre-activations of the input and recurrent projections (biases included, gates
  // i, f, g, o); c: [B, H]. Returns (h', c'): c' = sig(f) c + sig(i) tanh(g), h' = sig(o) tanh(c').
  m.def("lstm_cell_update(Tensor igates, Tensor hgates, Tensor c) -> (Tensor, Tensor)");
  // One GRU step: igates / hgates [B, 3H] (gates r, z, n; hgates includes b_hn), h [B, H].
  // Returns h' = (h - n) z + n with r = sig(.), z = sig(.), n = tanh(ig_n + r hg_n).
  m.def("gru_cell_update(Tensor igates, Tensor hgates, Tensor h) -> Tensor");
  // A whole layer, one direction, padded input (rnn_layer.cpp, every device): igates [T, B, 4H]
  // (the input projection of the sequence, biases included), h0 / c0 [B, H]; per step t
  // (T-1 down to 0 if reverse): hgates = linear_dynamic(h, hh_*), (h, c) = lstm_cell_update,
  // then h = linear_dynamic(h, hr_*) if the projection is given (each with reduce_range).
  // Returns (out [T, B, H'], h, c), bit-identical to those calls made one by one.
  m.def("lstm_layer_dynamic(Tensor igates, Tensor h0, Tensor c0, Tensor hh_w, Tensor hh_col_sums, "
        "Tensor hh_scale, Tensor? hh_bias, Tensor? hr_w, Tensor? hr_col_sums, Tensor? hr_scale, "
        "bool reverse=False, bool reduce_range=False) -> (Tensor, Tensor, Tensor)");
  // The same for a GRU layer: igates [T, B, 3H], h0 [B, H]. Returns (out [T, B, H], h).
  m.def("gru_layer_dynamic(Tensor igates, Tensor h0, Tensor hh_w, Tensor hh_col_sums, Tensor hh_scale, "
        "Tensor? hh_bias, bool reverse=False, bool reduce_range=False) -> (Tensor, Tensor)");

  // ---- embedding ----
  // Row-wise quantized embedding bag (cpu/embedding.cpp, cuda/embedding.cu). packed: uint8
  // [N, row_stride], each row its 8-bit (or two-per-byte 4-bit) values, padded to 4 bytes, then
  // float32 scale and zero point; a row's value is (q - zero_point) * scale. indices int64/int32:
  // 1-D with offsets (bag b = indices[offsets[b] : offsets[b + 1]], the last one to the end
  // unless include_last_offset), or 2-D [bags, entries] without. mode 0 sum, 1 mean, 2 max;
  // per_sample_weights (sum only) scale each entry; entries equal to padding_idx are skipped.
  // Every index and offset is checked before any row is read. Returns float32 [bags, dim].
  m.def("embedding_bag_rowwise(Tensor packed, int bits, int embedding_dim, Tensor indices, "
        "Tensor? offsets=None, int mode=0, Tensor? per_sample_weights=None, "
        "bool include_last_offset=False, int? padding_idx=None) -> Tensor");
  // A contiguous copy of x for long-lived data that a kernel reads at random or streams from
  // memory (a packed embedding table): on the CPU in fresh memory advised onto transparent huge
  // pages (cpu/alloc.h), where a random row costs no TLB miss; elsewhere a plain copy.
  m.def("streamed_copy(Tensor x) -> Tensor");
  // ---- int4 ----
  // int4 group-wise weight-only Linear (cpu/int4*.cpp, cuda/int4.cu; docs/quantization.md,
  // "int4 weight-only"). Portable weight: qweight uint8 [N, ceil(K/2)] (k even in the low
  // nibble), scale float [N, G] and zero_point integer [N, G] in [0, 15], G = ceil(K/group_size):
  // w[n, k] = scale[n, k // group_size] * (q[n, k] - zero_point[n, k // group_size]).
  // Returns the kernel layout of w's device (w_packed, w_qp, w_scale).
  m.def("int4_pack_weight(Tensor qweight, Tensor scale, Tensor zero_point, int in_features, "
        "int group_size) -> (Tensor, Tensor, Tensor)");
  // Float x [..., K] (float32 / bfloat16 / float16) -> [..., N] in x's dtype. CPU: per-row int8
  // activations and exact integer group sums; CUDA: float dequantization in registers.
  m.def("linear_int4(Tensor x, Tensor w_packed, Tensor w_qp, Tensor w_scale, Tensor? bias, "
        "int in_features, int out_features, int group_size) -> Tensor");
  // ---- conv transpose ----
  // Static int8 transposed convolution (cpu/conv_transpose.cpp, cuda/conv_transpose.cu;
  // docs/quantization.md, "Transposed convolution"). w: [Cin, Cout / groups, *kernel_size] int8
  // (nn.ConvTranspose*d's layout), symmetric per output channel -> (packed, col_sums int32
  // [groups * taps * Cout / groups]). The packed layout is the kernels' for w's device: on the
  // CPU 1-D, the panels [groups, kD, ceil(kH * kW * Cout/groups / 16), Cin/groups, 16] and a
  // 32-byte record of the weight's shape (cpu/packed_record.h), on CUDA [groups, *kernel_size,
  // Cin/groups, Cout/groups].
  m.def("pack_conv_transpose_weight(Tensor w, int groups=1) -> (Tensor, Tensor)");
  // x: int8/uint8 [N, Cin, *spatial], any layout, per-tensor qparams; w_scale [Cout]; bias
  // float [Cout]. Output sizes (in - 1) * stride - 2 * padding + dilation * (kernel - 1) +
  // output_padding + 1, as torch's conv_transpose*d. The sums are exact int32; the epilogue is
  // conv_int8's (linear_int8's). The output [N, Cout, *out] is channels-last in memory.
  m.def("conv_transpose_int8(Tensor x, Tensor x_scale, Tensor x_zero_point, Tensor w_packed, "
        "Tensor w_col_sums, Tensor w_scale, Tensor? bias, int[] kernel_size, int[] stride, "
        "int[] padding, int[] output_padding, int[] dilation, int groups, Tensor? out_scale, "
        "Tensor? out_zero_point, bool relu=False, ScalarType? out_dtype=None) -> Tensor");

  // ---- pooling ----
  // int8 pooling of the codes of a per-tensor quantized tensor, the qparams kept (cpu/pool*.cpp,
  // cuda/pool.cu; docs/quantization.md, "Pooling"). x: int8/uint8 [N, C, *spatial] or unbatched
  // [C, *spatial], 1 to 3 spatial dimensions (len(kernel_size) / len(output_size)); the output
  // has x's dtype and memory format (channels-last stays channels-last). stride (empty: the
  // kernel size), padding and dilation take one value per spatial dimension or one for all;
  // output sizes and errors follow torch's float pooling.
  // Max pooling: exact; a window of padding only gives the dtype's minimum.
  m.def("max_pool_int8(Tensor x, int[] kernel_size, int[] stride=[], int[] padding=[0], "
        "int[] dilation=[1], bool ceil_mode=False) -> Tensor");
  // Average pooling with x's zero point (int, one element): S = sum of (q - zero_point) over the
  // window's valid taps (exact), count as torch's avg_pool (count_include_pad, divisor_override),
  // y = clamp(nearbyint(float(S) * float32(1 / count)) + zero_point) to the dtype's range.
  m.def("avg_pool_int8(Tensor x, Tensor zero_point, int[] kernel_size, int[] stride=[], "
        "int[] padding=[0], bool ceil_mode=False, bool count_include_pad=True, "
        "int? divisor_override=None) -> Tensor");
  // Adaptive average pooling (torch's windows: floor(i * in / out) to ceil((i + 1) * in / out)),
  // rounded as avg_pool_int8. output_size [1, 1] is the global average of a classifier's head.
  m.def("adaptive_avg_pool_int8(Tensor x, Tensor zero_point, int[] output_size) -> Tensor");
}

// The ops that write into their arguments (and return nothing) do it as torch's in-place ops
// do: the written tensors' version counters go up (autograd then refuses a backward through a
// value saved before the write), and a written tensor that requires grad is refused.
namespace {

// ADInplaceOrView kernel of an op returning nothing: the op below it, then the version counter
// of every argument its schema marks as written (torch's generic fallback bumps the ones it
// returns only).
void bump_written_versions(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  std::vector<at::Tensor> written;
  const auto first = stack->size() - args.size();
  for (size_t i = 0; i < args.size(); ++i) {
    const auto* alias = args[i].alias_info();
    const auto& v = (*stack)[first + i];
    if (alias != nullptr && alias->isWrite() && v.isTensor()) written.push_back(v.toTensor());
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
  }
  // (an inference tensor has no version counter: written outside inference mode, as before)
  for (const auto& t : written) {
    if (!t.is_inference()) torch::autograd::impl::bump_version(t);
  }
}

// Autograd kernel of such an op: no gradient flows through it, so an argument it writes may
// not require grad (torch's message for a leaf); then the keys below, ADInplaceOrView's
// version bump included.
void refuse_written_requiring_grad(const c10::OperatorHandle& op, c10::DispatchKeySet ks,
                                   torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const auto first = stack->size() - args.size();
  for (size_t i = 0; i < args.size(); ++i) {
    const auto* alias = args[i].alias_info();
    const auto& v = (*stack)[first + i];
    if (alias != nullptr && alias->isWrite() && v.isTensor()) {
      TORCH_CHECK(!v.toTensor().requires_grad(), op.schema().name(), ": argument '", args[i].name(),
                  "' requires grad; it is written in place, through which no gradient flows (a leaf "
                  "Variable that requires grad is being used in an in-place operation)");
    }
  }
  at::AutoDispatchBelowAutograd guard;
  op.redispatchBoxed(ks & c10::after_autograd_keyset, stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchquant, ADInplaceOrView, m) {
  m.impl("observe_minmax_", torch::CppFunction::makeFromBoxedFunction<&bump_written_versions>());
  m.impl("histogram_", torch::CppFunction::makeFromBoxedFunction<&bump_written_versions>());
}

TORCH_LIBRARY_IMPL(torchquant, Autograd, m) {
  m.impl("observe_minmax_", torch::CppFunction::makeFromBoxedFunction<&refuse_written_requiring_grad>());
  m.impl("histogram_", torch::CppFunction::makeFromBoxedFunction<&refuse_written_requiring_grad>());
}

}  // namespace torchquant
