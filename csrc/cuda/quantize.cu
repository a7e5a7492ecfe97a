// CUDA kernels for quantize / dequantize / fake_quantize / fake_quantize_backward.
//
// One pass over the data, 16-byte vector loads and stores, grid-stride loops, the current
// stream, no host synchronization: qparams stay on the device and are read by the kernel.
// Each element goes through the one-element oracle of common/quant_math.h, so results are
// bit-identical with the CPU kernels (the build passes -fmad=false: no contraction).
//
// qparams on the device are not validated (that would need a device-to-host copy): zero points
// are clamped into [qmin, qmax] in the kernel, which keeps every float-to-int conversion
// defined; a non-positive or non-finite scale gives defined but meaningless values.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "common/checks.h"
#include "common/quant_math.h"
#include "cuda/common.cuh"
#include "ops.h"

namespace torchquant {
namespace cuda {
namespace {

// Walks the channel index of consecutive elements of a contiguous tensor viewed as
// [outer, C, inner]: one division for the first element, increments afterwards.
template <class IndexT, bool kPerChannel>
struct ChannelWalk {
  IndexT c = 0, pos = 0, C, inner;
  __device__ __forceinline__ ChannelWalk(IndexT i, IndexT C_, IndexT inner_) : C(C_), inner(inner_) {
    if (kPerChannel) {
      const IndexT row = i / inner;
      pos = i - row * inner;
      c = row % C;
    }
  }
  __device__ __forceinline__ void next() {
    if (kPerChannel && ++pos == inner) {
      pos = 0;
      if (++c == C) c = 0;
    }
  }
};

__device__ __forceinline__ int32_t clamp_i32(int32_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

struct QuantizeOp {
  const float* x;
  uint8_t* q;  // int8 values are stored through their two's-complement byte
  const float* inv_scale;
  const int32_t* zp;
  int32_t qmin, qmax;

  template <int V, class W>
  __device__ __forceinline__ void run(int64_t i, W w) const {
    const Vec<float, V> xv = load_vec<float, V>(x + i);
    Vec<uint8_t, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float fzp = static_cast<float>(clamp_i32(zp[w.c], qmin, qmax));
      const float t = quantize_val(xv.v[j], inv_scale[w.c], fzp, static_cast<float>(qmin),
                                   static_cast<float>(qmax));
      // t is an integer inside [qmin, qmax] (within the storage type): the casts are exact.
      out.v[j] = static_cast<uint8_t>(static_cast<int32_t>(t));
      w.next();
    }
    store_vec<uint8_t, V>(q + i, out);
  }
};

struct DequantizeOp {
  const uint8_t* q;
  float* y;
  const float* scale;
  const int32_t* zp;
  bool is_unsigned;

  template <int V, class W>
  __device__ __forceinline__ void run(int64_t i, W w) const {
    const Vec<uint8_t, V> qv = load_vec<uint8_t, V>(q + i);
    Vec<float, V> out;
    const int32_t lo = is_unsigned ? 0 : -128, hi = is_unsigned ? 255 : 127;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int32_t qi = is_unsigned ? static_cast<int32_t>(qv.v[j])
                                     : static_cast<int32_t>(static_cast<int8_t>(qv.v[j]));
      out.v[j] = dequantize_val(qi, scale[w.c], clamp_i32(zp[w.c], lo, hi));
      w.next();
    }
    store_vec<float, V>(y + i, out);
  }
};

struct FakeQuantizeOp {
  const float* x;
  float* y;
  const float* scale;
  const float* inv_scale;
  const int32_t* zp;
  int32_t qmin, qmax;

  template <int V, class W>
  __device__ __forceinline__ void run(int64_t i, W w) const {
    const Vec<float, V> xv = load_vec<float, V>(x + i);
    Vec<float, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float fzp = static_cast<float>(clamp_i32(zp[w.c], qmin, qmax));
      out.v[j] = fake_quantize_val(xv.v[j], scale[w.c], inv_scale[w.c], fzp,
                                   static_cast<float>(qmin), static_cast<float>(qmax));
      w.next();
    }
    store_vec<float, V>(y + i, out);
  }
};

struct FakeQuantizeGradOp {
  const float* dy;
  const float* x;
  float* dx;
  const float* inv_scale;
  const int32_t* zp;
  int32_t qmin, qmax;

  template <int V, class W>
  __device__ __forceinline__ void run(int64_t i, W w) const {
    const Vec<float, V> xv = load_vec<float, V>(x + i);
    const Vec<float, V> gv = load_vec<float, V>(dy + i);
    Vec<float, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float fzp = static_cast<float>(clamp_i32(zp[w.c], qmin, qmax));
      out.v[j] = fake_quantize_mask(xv.v[j], inv_scale[w.c], fzp, static_cast<float>(qmin),
                                    static_cast<float>(qmax))
                     ? gv.v[j]
                     : 0.0f;
      w.next();
    }
    store_vec<float, V>(dx + i, out);
  }
};

// Vectors of V elements over [0, n - n % V), then the tail one element at a time. IndexT is
// int32 when n leaves room for the loop counter, int64 otherwise.
template <int V, class IndexT, bool kPerChannel, class Op>
__global__ void __launch_bounds__(kThreads)
    elementwise_kernel(Op op, IndexT n, IndexT C, IndexT inner) {
  const IndexT stride = static_cast<IndexT>(gridDim.x) * blockDim.x;
  const IndexT first = static_cast<IndexT>(blockIdx.x) * blockDim.x + threadIdx.x;
  const IndexT nvec = n / V;
  for (IndexT v = first; v < nvec; v += stride) {
    op.template run<V>(static_cast<int64_t>(v) * V, ChannelWalk<IndexT, kPerChannel>(v * V, C, inner));
  }
  for (IndexT i = nvec * V + first; i < n; i += stride) {
    op.template run<1>(static_cast<int64_t>(i), ChannelWalk<IndexT, kPerChannel>(i, C, inner));
  }
}

template <int V, bool kPerChannel, class Op>
void launch_indexed(const Op& op, int64_t n, int64_t C, int64_t inner, cudaStream_t stream) {
  const unsigned grid = grid_for((n + V - 1) / V);
  // int32 indices while n plus one grid-stride step cannot overflow them.
  if (n + static_cast<int64_t>(grid) * kThreads * V < std::numeric_limits<int32_t>::max()) {
    elementwise_kernel<V, int32_t, kPerChannel><<<grid, kThreads, 0, stream>>>(
        op, static_cast<int32_t>(n), static_cast<int32_t>(C), static_cast<int32_t>(inner));
  } else {
    elementwise_kernel<V, int64_t, kPerChannel><<<grid, kThreads, 0, stream>>>(op, n, C, inner);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// V = 16: 16 int8 or 4 x 4 floats per thread per step, every access a 16-byte vector. Pointers
// that are not 16-byte aligned (a view with an odd storage offset) take the scalar path.
template <class Op>
void launch(const Op& op, int64_t n, int64_t C, int64_t inner, bool vector_ok) {
  if (n == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool pc = C > 1;
  if (vector_ok) {
    pc ? launch_indexed<16, true>(op, n, C, inner, stream)
       : launch_indexed<16, false>(op, n, C, inner, stream);
  } else {
    pc ? launch_indexed<1, true>(op, n, C, inner, stream)
       : launch_indexed<1, false>(op, n, C, inner, stream);
  }
}

struct Layout {
  int64_t C = 1, inner = 1;
};

Layout layout(const at::Tensor& x, int64_t axis) {
  Layout l;
  if (axis < 0) return l;
  l.C = x.size(axis);
  for (int64_t d = axis + 1; d < x.dim(); ++d) l.inner *= x.size(d);
  return l;
}

at::Tensor as_float_contiguous(const at::Tensor& x) { return x.to(at::kFloat).contiguous(); }

// x as float32, in its own strides when keeps_strides (common/checks.h), else contiguous.
at::Tensor as_float(const at::Tensor& x, bool strided) {
  if (!strided) return as_float_contiguous(x);
  at::Tensor f = x.to(at::kFloat);  // (preserve_format: a dense tensor's strides exactly)
  TORCH_INTERNAL_ASSERT(f.strides() == x.strides());
  return f;
}

at::Tensor new_output(const at::Tensor& like, bool strided, const at::TensorOptions& options) {
  return strided ? at::empty_strided(like.sizes(), like.strides(), options) : at::empty(like.sizes(), options);
}

}  // namespace

at::Tensor quantize_cuda(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                         std::optional<int64_t> axis, int64_t qmin, int64_t qmax,
                         at::ScalarType dtype) {
  check_float_input(x, "x");
  check_qrange(qmin, qmax, dtype);
  c10::cuda::CUDAGuard guard(x.device());
  const QParams p = prepare_qparams(x, "x", scale, zero_point, axis, qmin, qmax);
  const bool strided = keeps_strides(x, p.axis);
  const at::Tensor xc = as_float(x, strided);
  at::Tensor out = new_output(x, strided, x.options().dtype(dtype));
  const Layout l = layout(x, p.axis);
  QuantizeOp op{xc.data_ptr<float>(), static_cast<uint8_t*>(out.data_ptr()),
                p.inv_scale.data_ptr<float>(), p.zero_point.data_ptr<int32_t>(),
                static_cast<int32_t>(qmin), static_cast<int32_t>(qmax)};
  launch(op, x.numel(), l.C, l.inner, aligned16(op.x) && aligned16(op.q));
  return out;
}

at::Tensor dequantize_cuda(const at::Tensor& q, const at::Tensor& scale,
                           const at::Tensor& zero_point, std::optional<int64_t> axis,
                           std::optional<at::ScalarType> out_dtype) {
  check_int8_input(q, "q");
  const at::ScalarType odt = out_dtype.value_or(at::kFloat);
  TORCH_CHECK(at::isFloatingType(odt), "argument 'out_dtype' must be a floating-point dtype, got ",
              odt);
  c10::cuda::CUDAGuard guard(q.device());
  const bool u = q.scalar_type() == at::kByte;
  const QParams p = prepare_qparams(q, "q", scale, zero_point, axis, u ? 0 : -128, u ? 255 : 127,
                                    /*with_inv=*/false);
  const bool strided = keeps_strides(q, p.axis);
  const at::Tensor qc = strided ? q : q.contiguous();
  at::Tensor out = new_output(q, strided, q.options().dtype(at::kFloat));
  const Layout l = layout(q, p.axis);
  DequantizeOp op{static_cast<const uint8_t*>(qc.data_ptr()), out.data_ptr<float>(),
                  p.scale.data_ptr<float>(), p.zero_point.data_ptr<int32_t>(), u};
  launch(op, q.numel(), l.C, l.inner, aligned16(op.q) && aligned16(op.y));
  return odt == at::kFloat ? out : out.to(odt);
}

at::Tensor fake_quantize_cuda(const at::Tensor& x, const at::Tensor& scale,
                              const at::Tensor& zero_point, std::optional<int64_t> axis,
                              int64_t qmin, int64_t qmax) {
  check_float_input(x, "x");
  check_fake_qrange(qmin, qmax);
  c10::cuda::CUDAGuard guard(x.device());
  const QParams p = prepare_qparams(x, "x", scale, zero_point, axis, qmin, qmax);
  const bool strided = keeps_strides(x, p.axis);
  const at::Tensor xc = as_float(x, strided);
  at::Tensor out = new_output(x, strided, x.options().dtype(at::kFloat));
  const Layout l = layout(x, p.axis);
  FakeQuantizeOp op{xc.data_ptr<float>(),          out.data_ptr<float>(),
                    p.scale.data_ptr<float>(),     p.inv_scale.data_ptr<float>(),
                    p.zero_point.data_ptr<int32_t>(), static_cast<int32_t>(qmin),
                    static_cast<int32_t>(qmax)};
  launch(op, x.numel(), l.C, l.inner, aligned16(op.x) && aligned16(op.y));
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

at::Tensor fake_quantize_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                       const at::Tensor& scale, const at::Tensor& zero_point,
                                       std::optional<int64_t> axis, int64_t qmin, int64_t qmax) {
  check_float_input(x, "x");
  check_grad_like(grad, x);
  check_fake_qrange(qmin, qmax);
  c10::cuda::CUDAGuard guard(x.device());
  const QParams p = prepare_qparams(x, "x", scale, zero_point, axis, qmin, qmax);
  const bool strided = keeps_strides(x, p.axis) && same_layout(grad, x);
  const at::Tensor xc = as_float(x, strided), gc = as_float(grad, strided);
  at::Tensor out = new_output(x, strided, x.options().dtype(at::kFloat));
  const Layout l = layout(x, p.axis);
  FakeQuantizeGradOp op{gc.data_ptr<float>(),          xc.data_ptr<float>(),
                        out.data_ptr<float>(),         p.inv_scale.data_ptr<float>(),
                        p.zero_point.data_ptr<int32_t>(), static_cast<int32_t>(qmin),
                        static_cast<int32_t>(qmax)};
  launch(op, x.numel(), l.C, l.inner, aligned16(op.dy) && aligned16(op.x) && aligned16(op.dx));
  return grad.scalar_type() == at::kFloat ? out : out.to(grad.scalar_type());
}

TORCH_LIBRARY_IMPL(torchquant, CUDA, m) {
  m.impl("quantize", &quantize_cuda);
  m.impl("dequantize", &dequantize_cuda);
  m.impl("fake_quantize", &fake_quantize_cuda);
  m.impl("fake_quantize_backward", &fake_quantize_backward_cuda);
}

}  // namespace cuda
}  // namespace torchquant
