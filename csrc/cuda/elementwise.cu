// CUDA kernels for the quantized elementwise ops (add, mul, add_scalar, mul_scalar, cat).
//
// Broadcast operands are expanded into the output's memory format first (channels-last kept),
// so the kernels walk flat arrays: one grid-stride loop per op, the current stream, no host
// synchronization (qparams stay on the device; zero points are clamped into the type's range,
// as the quantize kernels do). Each element goes through the same float32 steps as the CPU
// oracle (cpu/elementwise_scalar.cpp), with -fmad=false, so the results are bit-identical.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "common/checks.h"
#include "common/elementwise_checks.h"
#include "common/quant_math.h"
#include "cuda/common.cuh"
#include "ops.h"

namespace torchquant {
namespace cuda {
namespace {

struct EwArgs {
  const uint8_t* a;
  const uint8_t* b;
  uint8_t* out;
  const float* a_scale;
  const int32_t* a_zp;
  const float* b_scale;
  const int32_t* b_zp;
  const float* out_scale;
  const int32_t* out_zp;
  float other;  // add_scalar's addend / mul_scalar's factor
  int op;       // 0 add, 1 mul, 2 add_scalar, 3 mul_scalar, 4 requantize
  bool a_unsigned, b_unsigned, out_unsigned, relu;
};

__device__ __forceinline__ int32_t clamp_i32(int32_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

__device__ __forceinline__ int32_t load_q(const uint8_t* p, int64_t i, bool is_unsigned) {
  return is_unsigned ? static_cast<int32_t>(p[i]) : static_cast<int32_t>(static_cast<int8_t>(p[i]));
}

__global__ void __launch_bounds__(kThreads) ew_kernel(EwArgs e, int64_t n) {
  const float qmin = e.out_unsigned ? 0.0f : -128.0f, qmax = e.out_unsigned ? 255.0f : 127.0f;
  const int32_t a_lo = e.a_unsigned ? 0 : -128, a_hi = e.a_unsigned ? 255 : 127;
  const int32_t b_lo = e.b_unsigned ? 0 : -128, b_hi = e.b_unsigned ? 255 : 127;
  const int32_t a_zp = clamp_i32(e.a_zp[0], a_lo, a_hi);
  const int32_t out_zp = clamp_i32(e.out_zp[0], static_cast<int32_t>(qmin), static_cast<int32_t>(qmax));
  const float sa = e.a_scale[0];
  const float inv_out = 1.0f / e.out_scale[0];  // IEEE division (no fast-math in the build)
  float m = sa, c = 0.0f, sb = 1.0f;
  int32_t b_zp = 0;
  if (e.op <= 1) {
    sb = e.b_scale[0];
    b_zp = clamp_i32(e.b_zp[0], b_lo, b_hi);
    m = sa * sb;
  } else if (e.op == 2) {
    c = e.other;
  } else if (e.op == 3) {
    m = sa * e.other;
  }
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t x = load_q(e.a, i, e.a_unsigned) - a_zp;
    float y;
    if (e.op == 0) {
      const int32_t z = load_q(e.b, i, e.b_unsigned) - b_zp;
      y = static_cast<float>(x) * sa + static_cast<float>(z) * sb;
    } else if (e.op == 1) {
      const int32_t z = load_q(e.b, i, e.b_unsigned) - b_zp;
      y = static_cast<float>(x * z) * m;
    } else {
      y = static_cast<float>(x) * m + c;
    }
    if (e.relu) y = y < 0.0f ? 0.0f : y;
    const float t = quantize_val(y, inv_out, static_cast<float>(out_zp), qmin, qmax);
    e.out[i] = static_cast<uint8_t>(static_cast<int32_t>(t));
  }
}

void launch(const EwArgs& e, int64_t n) {
  if (n == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  ew_kernel<<<grid_for(n), kThreads, 0, stream>>>(e, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

EwArgs base_args(const at::Tensor& a, const EwQParams& qa, const EwQParams& qo, at::ScalarType odt) {
  EwArgs e{};
  e.a = static_cast<const uint8_t*>(a.data_ptr());
  e.a_scale = qa.scale_t.data_ptr<float>();
  e.a_zp = qa.zero_point_t.data_ptr<int32_t>();
  e.out_scale = qo.scale_t.data_ptr<float>();
  e.out_zp = qo.zero_point_t.data_ptr<int32_t>();
  e.a_unsigned = a.scalar_type() == at::kByte;
  e.out_unsigned = odt == at::kByte;
  return e;
}

at::Tensor binary(int op, const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& a_zero_point,
                  const at::Tensor& b, const at::Tensor& b_scale, const at::Tensor& b_zero_point,
                  const at::Tensor& out_scale, const at::Tensor& out_zero_point, bool relu,
                  std::optional<at::ScalarType> out_dtype) {
  const EwBinaryArgs args = ew_binary_args(a, a_scale, a_zero_point, b, b_scale, b_zero_point,
                                           out_scale, out_zero_point, out_dtype);
  c10::cuda::CUDAGuard guard(a.device());
  const at::ScalarType odt = args.odt;
  const EwQParams &qa = args.a, &qb = args.b, &qo = args.out;
  const std::vector<int64_t> shape = at::infer_size(a.sizes(), b.sizes());
  const at::IntArrayRef sh(shape);
  // The output's layout is the fake kernel's, as on the CPU (ew_binary_output). (It was
  // empty(shape, suggested memory format): a dense permuted input, e.g. x.transpose(2, 3), gave a
  // contiguous CUDA output where the fake and the CPU give x's strides.) Each operand is read in
  // the output's element order: in place when it has the output's sizes and strides, else
  // expanded into a copy laid out as the output (empty_like of the dense output keeps its strides).
  at::Tensor out = ew_binary_output(a, b, odt);
  auto in_out_order = [&](const at::Tensor& t) {
    return t.sizes() == sh && t.strides() == out.strides()
               ? t
               : at::empty_like(out, t.options()).copy_(t.expand(shape));
  };
  const at::Tensor ae = in_out_order(a), be = in_out_order(b);
  EwArgs e = base_args(ae, qa, qo, odt);
  e.b = static_cast<const uint8_t*>(be.data_ptr());
  e.b_scale = qb.scale_t.data_ptr<float>();
  e.b_zp = qb.zero_point_t.data_ptr<int32_t>();
  e.b_unsigned = b.scalar_type() == at::kByte;
  e.out = static_cast<uint8_t*>(out.data_ptr());
  e.op = op;
  e.relu = relu;
  launch(e, out.numel());
  return out;
}

// op 2 (add_scalar), 3 (mul_scalar) or 4 (requantize), into a new tensor in a's layout.
at::Tensor unary(int op, const at::Tensor& a, const EwQParams& qa, double other, const EwQParams& qo,
                 at::ScalarType odt) {
  // Layout as the CPU kernel's and the fake's (empty_like(a)): a dense a's strides are kept (it
  // was empty(sizes, suggested memory format), contiguous for a dense permuted a such as a.t()),
  // and a is read in the output's element order, copied into that layout where it differs.
  at::Tensor out = at::empty_like(a, a.options().dtype(odt));
  const at::Tensor ac = a.strides() == out.strides() ? a : at::empty_like(out, a.options()).copy_(a);
  EwArgs e = base_args(ac, qa, qo, odt);
  e.out = static_cast<uint8_t*>(out.data_ptr());
  e.op = op;
  e.other = static_cast<float>(other);
  launch(e, out.numel());
  return out;
}

}  // namespace

at::Tensor add_cuda(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& a_zero_point,
                    const at::Tensor& b, const at::Tensor& b_scale, const at::Tensor& b_zero_point,
                    const at::Tensor& out_scale, const at::Tensor& out_zero_point, bool relu,
                    std::optional<at::ScalarType> out_dtype) {
  return binary(0, a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale, out_zero_point,
                relu, out_dtype);
}

at::Tensor mul_cuda(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& a_zero_point,
                    const at::Tensor& b, const at::Tensor& b_scale, const at::Tensor& b_zero_point,
                    const at::Tensor& out_scale, const at::Tensor& out_zero_point, bool relu,
                    std::optional<at::ScalarType> out_dtype) {
  return binary(1, a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale, out_zero_point,
                relu, out_dtype);
}

namespace {
at::Tensor scalar_op(int op, const at::Tensor& a, const at::Tensor& a_scale,
                     const at::Tensor& a_zero_point, double other, const at::Tensor& out_scale,
                     const at::Tensor& out_zero_point, std::optional<at::ScalarType> out_dtype) {
  const EwScalarArgs q = ew_scalar_args(a, a_scale, a_zero_point, out_scale, out_zero_point, out_dtype);
  c10::cuda::CUDAGuard guard(a.device());
  return unary(op, a, q.a, other, q.out, q.odt);
}
}  // namespace

at::Tensor add_scalar_cuda(const at::Tensor& a, const at::Tensor& a_scale,
                           const at::Tensor& a_zero_point, double other,
                           const at::Tensor& out_scale, const at::Tensor& out_zero_point,
                           std::optional<at::ScalarType> out_dtype) {
  return scalar_op(2, a, a_scale, a_zero_point, other, out_scale, out_zero_point, out_dtype);
}

at::Tensor mul_scalar_cuda(const at::Tensor& a, const at::Tensor& a_scale,
                           const at::Tensor& a_zero_point, double other,
                           const at::Tensor& out_scale, const at::Tensor& out_zero_point,
                           std::optional<at::ScalarType> out_dtype) {
  return scalar_op(3, a, a_scale, a_zero_point, other, out_scale, out_zero_point, out_dtype);
}

at::Tensor cat_cuda(at::TensorList tensors, at::TensorList scales, at::TensorList zero_points,
                    int64_t dim, const at::Tensor& out_scale, const at::Tensor& out_zero_point,
                    std::optional<at::ScalarType> out_dtype) {
  const EwCatArgs q = ew_cat_args(tensors, scales, zero_points, out_scale, out_zero_point, out_dtype);
  c10::cuda::CUDAGuard guard(tensors[0].device());
  // Every input is requantized (with equal qparams that is the identity for the scales the
  // CPU copies; comparing them here would need a host sync).
  std::vector<at::Tensor> parts;
  parts.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) parts.push_back(unary(4, tensors[i], q.in[i], 0.0, q.out, q.odt));
  return at::cat(parts, dim);
}

namespace {
// out[i] = table[a[i] ^ flip]: the 256-byte table in shared memory, a grid-stride loop.
__global__ void lookup_table_kernel(const uint8_t* __restrict__ a, const uint8_t* __restrict__ table,
                                    uint8_t* __restrict__ out, int64_t n, uint8_t flip) {
  __shared__ uint8_t lut[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) lut[i] = table[i];
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = lut[a[i] ^ flip];
  }
}
}  // namespace

at::Tensor lookup_table_cuda(const at::Tensor& a, const at::Tensor& table) {
  check_lookup_table_args(a, table);
  c10::cuda::CUDAGuard guard(a.device());
  // Layout as the CPU kernel's and the fake's: empty_like, a read in the output's element order.
  at::Tensor out = at::empty_like(a, a.options().dtype(table.scalar_type()));
  const at::Tensor ac = a.strides() == out.strides() ? a : at::empty_like(out, a.options()).copy_(a);
  const at::Tensor t = table.contiguous();
  const int64_t n = ac.numel();
  if (n == 0) return out;
  lookup_table_kernel<<<grid_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      static_cast<const uint8_t*>(ac.data_ptr()), static_cast<const uint8_t*>(t.data_ptr()),
      static_cast<uint8_t*>(out.data_ptr()), n, a.scalar_type() == at::kChar ? 0x80 : 0x00);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(torchquant, CUDA, m) {
  m.impl("lookup_table", &cuda::lookup_table_cuda);
  m.impl("add", &cuda::add_cuda);
  m.impl("mul", &cuda::mul_cuda);
  m.impl("add_scalar", &cuda::add_scalar_cuda);
  m.impl("mul_scalar", &cuda::mul_scalar_cuda);
  m.impl("cat", &cuda::cat_cuda);
}

}  // namespace torchquant
