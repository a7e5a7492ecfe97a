// Argument checks shared by every op: one helper per kind of argument, each error naming the
// argument and the value it got.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>

namespace torchquant {

// x is a floating-point tensor (float32, float64, float16 or bfloat16).
void check_float_input(const at::Tensor& x, const char* name);
// q is an int8 or uint8 tensor.
void check_int8_input(const at::Tensor& q, const char* name);
// dtype is int8 or uint8 and qmin < qmax lie inside it.
void check_qrange(int64_t qmin, int64_t qmax, at::ScalarType dtype);
// [qmin, qmax] of a fake-quantize (any integer range, not only 8-bit): qmin < qmax and both
// within +-2^23, where every integer is exact in float32.
void check_fake_qrange(int64_t qmin, int64_t qmax);
// The incoming gradient of a fake-quantize: floating point, with x's shape and device.
void check_grad_like(const at::Tensor& grad, const at::Tensor& x);
// An integer zero-point tensor as int32 for a kernel that clamps it into its dtype's range (the
// GPU's): values past int32 saturate first instead of wrapping (an int64 2^32 + 3 is not 3).
at::Tensor zero_point_int32(const at::Tensor& zero_point);
// Every tensor lies on the device of `ref`.
void check_same_device(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                       const char* name);
// Normalizes axis into [0, dim); per tensor (nullopt) gives -1.
int64_t normalize_axis(std::optional<int64_t> axis, const at::Tensor& x, const char* x_name);

// Each of the n float32 values v[i], element i of the floating-point tensor `given` (flattened)
// as the kernels read it, is > 0 and finite. Otherwise the error names the argument, the value
// given, v[i] too where float32 changed it ("got 1e-200 (0 in float32)"), and, with `where`
// ("channel", "row"), the index: "... at channel 3". `given` is read only on that error path,
// on the host: v must come from a CPU tensor.
void check_scale_values(const at::Tensor& given, const float* v, int64_t n, const char* name,
                        const char* where);

// The elementwise quantize / dequantize / fake-quantize ops run a per-tensor op (axis < 0) on a
// dense tensor that is not contiguous (channels-last activations, a transposed matrix) over its
// memory as it lies, and give the output its strides, as torch's elementwise ops keep such a
// layout: the op is elementwise and one qparam pair covers every element, so the order does not
// matter. Per channel, non-dense (a slice with a step) or empty: contiguous.
// python/torchquant/_ops.py's fake kernels follow the same rule.
bool keeps_strides(const at::Tensor& x, int64_t axis);

// Whether two tensors lie alike in memory: equal sizes, and equal strides on every dimension of
// size > 1 (a size-1 dimension's stride says nothing about the layout, and factories differ on it).
bool same_layout(const at::Tensor& a, const at::Tensor& b);

// Quantization parameters ready for a kernel: float32 scale and 1/scale, int32 zero point,
// contiguous, on x's device, one entry per channel (one for per tensor).
struct QParams {
  at::Tensor scale;      // float32
  at::Tensor inv_scale;  // float32, 1.0f / scale computed in float32 (see inv())
  at::Tensor zero_point; // int32
  int64_t axis;          // -1 for per tensor
  float inv_scale1 = 0;  // 1.0f / scale of per-tensor qparams on the CPU, where inv_scale is left empty
  // 1.0f / scale per channel: host memory for CPU qparams, device memory otherwise. Undefined
  // (nullptr) when prepare_qparams was told no kernel reads it.
  const float* inv() const {
    if (inv_scale.defined()) return inv_scale.data_ptr<float>();
    return scale.is_cpu() && scale.numel() == 1 ? &inv_scale1 : nullptr;
  }
};

// Validates scale / zero_point against x, axis and [qmin, qmax] and converts them. Values are
// checked (scale > 0 and finite, zero_point inside [qmin, qmax]) when they live on the CPU;
// on an accelerator that check would cost a device sync, so kernels there clamp instead.
// `with_inv`: whether the kernel reads 1 / scale (quantize does, dequantize does not: an
// allocation, or a kernel launch on a GPU, saved per call).
QParams prepare_qparams(const at::Tensor& x, const char* x_name, const at::Tensor& scale,
                        const at::Tensor& zero_point, std::optional<int64_t> axis, int64_t qmin,
                        int64_t qmax, bool with_inv = true);

// The largest inner dimension K for which an int32 accumulator of K products of a uint8/int8
// activation (|a - zp| <= 255) and an int8 weight (|w| <= 128) cannot overflow:
// K * 255 * 128 <= 2^31 - 1.
constexpr int64_t kMaxK = 65793;
void check_k_bound(int64_t K, const char* name);

}  // namespace torchquant
