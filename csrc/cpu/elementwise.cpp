// CPU adapters for the quantized elementwise ops (add, mul, add_scalar, mul_scalar, cat):
// argument checks, broadcasting and layout (TensorIterator: any strides, the output in the
// inputs' memory format, channels-last kept), threads, and the choice of kernel variant. The
// kernels are raw-pointer loops in elementwise_scalar.cpp and elementwise_avx2.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "common/checks.h"
#include "common/elementwise_checks.h"
#include "cpu/elementwise_kernels.h"
#include "cpu/isa.h"
#include "ops.h"

namespace torchquant {
namespace {

constexpr int64_t kGrain = 32768;

struct Kernels {
  decltype(&cpu::ew_binary_rows__scalar) binary;
  decltype(&cpu::ew_unary_rows__scalar) unary;
};

const Kernels& kernels() {
  static const Kernels scalar{cpu::ew_binary_rows__scalar, cpu::ew_unary_rows__scalar};
  static const Kernels avx2{cpu::ew_binary_rows__avx2, cpu::ew_unary_rows__avx2};
  // Memory-bound: AVX-512 CPUs use the AVX2 kernels.
  return cpu_isa() == CpuIsa::Scalar ? scalar : avx2;
}

cpu::EwParams out_params(at::ScalarType odt, const EwQParams& po, bool relu) {
  cpu::EwParams p;
  const auto r = full_range(odt);
  p.qmin = r.first;
  p.qmax = r.second;
  p.out_unsigned = odt == at::kByte;
  p.out_zp = po.zero_point;
  p.inv_out = 1.0f / po.scale;
  p.relu = relu;
  return p;
}

at::Tensor binary(cpu::EwOp op, const at::Tensor& a, const at::Tensor& a_scale,
                  const at::Tensor& a_zero_point, const at::Tensor& b, const at::Tensor& b_scale,
                  const at::Tensor& b_zero_point, const at::Tensor& out_scale,
                  const at::Tensor& out_zero_point, bool relu,
                  std::optional<at::ScalarType> out_dtype) {
  const EwBinaryArgs args = ew_binary_args(a, a_scale, a_zero_point, b, b_scale, b_zero_point,
                                           out_scale, out_zero_point, out_dtype);
  const at::ScalarType odt = args.odt;
  const EwQParams &qa = args.a, &qb = args.b, &qo = args.out;
  cpu::EwParams p = out_params(odt, qo, relu);
  p.a_scale = qa.scale;
  p.b_scale = qb.scale;
  p.m = qa.scale * qb.scale;
  p.a_zp = qa.zero_point;
  p.b_zp = qb.zero_point;
  p.a_unsigned = a.scalar_type() == at::kByte;
  p.b_unsigned = b.scalar_type() == at::kByte;
  // The output's layout is the fake kernel's and the GPU's (ew_binary_output). TensorIterator's
  // own choice followed a broadcast first input's strides where the fake kernel said otherwise
  // (a = x.transpose(1, 2) of shape [1, 5, 6] plus b [4, 5, 6]: (30, 1, 5) against (30, 6, 1)).
  at::Tensor out = ew_binary_output(a, b, odt);
  at::TensorIterator iter = at::TensorIteratorConfig()
                                .add_output(out)
                                .add_const_input(a)
                                .add_const_input(b)
                                .check_all_same_dtype(false)
                                .declare_static_dtype_and_device(odt, a.device())
                                .build();
  const Kernels& k = kernels();
  iter.for_each(
      [&](char** data, const int64_t* strides, int64_t n0, int64_t n1) {
        k.binary(op, data[1], strides[1], strides[4], data[2], strides[2], strides[5], data[0], strides[0],
                 strides[3], n0, n1, p);
      },
      kGrain);
  return out;
}

// y = float(a - a_zp) * m + c, requantized, written into `out` (any strides, a's shape).
void unary_into(const at::Tensor& out, const at::Tensor& a, const cpu::EwParams& p) {
  at::TensorIterator iter = at::TensorIteratorConfig()
                                .add_output(out)
                                .add_const_input(a)
                                .check_all_same_dtype(false)
                                .build();
  const Kernels& k = kernels();
  iter.for_each(
      [&](char** data, const int64_t* strides, int64_t n0, int64_t n1) {
        k.unary(data[1], strides[1], strides[3], data[0], strides[0], strides[2], n0, n1, p);
      },
      kGrain);
}

cpu::EwParams unary_params(const at::Tensor& a, const EwQParams& qa, float m, float c, const EwQParams& qo,
                           at::ScalarType odt) {
  cpu::EwParams p = out_params(odt, qo, false);
  p.a_zp = qa.zero_point;
  p.a_unsigned = a.scalar_type() == at::kByte;
  p.m = m;
  p.c = c;
  return p;
}

at::Tensor unary(const at::Tensor& a, const EwQParams& qa, float m, float c, const EwQParams& qo,
                 at::ScalarType odt) {
  at::Tensor out = at::empty_like(a, a.options().dtype(odt));
  unary_into(out, a, unary_params(a, qa, m, c, qo, odt));
  return out;
}

// Scales for which requantizing with the same qparams is provably the identity (the product
// (q - zp) * scale and 1 / scale are normal floats): cat copies such inputs.
bool copy_is_exact(float s) { return s >= 0x1p-100f && s <= 0x1p100f; }

// torch.cat skips a 1-D empty input (legacy): it takes no part in the checks or the output.
bool cat_skips(const at::Tensor& t) { return t.dim() == 1 && t.size(0) == 0; }

// torch.cat's output for these inputs in dtype odt: a 1-D empty input is skipped (legacy), the
// others agree in rank and in every size but dim's; the memory format is the inputs' common
// suggested one, else contiguous (ATen's cat_compute_output_memory_format).
at::Tensor cat_output(at::TensorList tensors, int64_t dim, at::ScalarType odt) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].dim() > 0, "zero-dimensional tensor (at position ", i, ") cannot be concatenated");
  }
  int64_t ref = -1;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!cat_skips(tensors[i])) {
      ref = static_cast<int64_t>(i);
      break;
    }
  }
  if (ref < 0) return at::empty({0}, tensors[0].options().dtype(odt));
  const at::Tensor& first = tensors[ref];
  const int64_t d = at::maybe_wrap_dim(dim, first.dim());
  std::vector<int64_t> sizes(first.sizes().begin(), first.sizes().end());
  sizes[d] = 0;
  std::optional<at::MemoryFormat> format;
  bool contiguous = false;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const at::MemoryFormat f = t.suggest_memory_format();
    if (f == at::MemoryFormat::Contiguous || (format.has_value() && *format != f)) contiguous = true;
    format = f;
    if (cat_skips(t)) continue;
    TORCH_CHECK(t.dim() == first.dim(), "Tensors must have same number of dimensions: got ", first.dim(), " and ",
                t.dim());
    for (int64_t k = 0; k < first.dim(); ++k) {
      if (k == d) continue;
      TORCH_CHECK(t.size(k) == first.size(k), "Sizes of tensors must match except in dimension ", d,
                  ". Expected size ", first.size(k), " but got size ", t.size(k), " for tensor number ", i,
                  " in the list.");
    }
    sizes[d] += t.size(d);
  }
  const at::MemoryFormat fmt = contiguous ? at::MemoryFormat::Contiguous : *format;
  return at::empty(sizes, tensors[0].options().dtype(odt).memory_format(fmt));
}

}  // namespace

at::Tensor add_cpu(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& a_zero_point,
                   const at::Tensor& b, const at::Tensor& b_scale, const at::Tensor& b_zero_point,
                   const at::Tensor& out_scale, const at::Tensor& out_zero_point, bool relu,
                   std::optional<at::ScalarType> out_dtype) {
  return binary(cpu::EwOp::Add, a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale,
                out_zero_point, relu, out_dtype);
}

at::Tensor mul_cpu(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& a_zero_point,
                   const at::Tensor& b, const at::Tensor& b_scale, const at::Tensor& b_zero_point,
                   const at::Tensor& out_scale, const at::Tensor& out_zero_point, bool relu,
                   std::optional<at::ScalarType> out_dtype) {
  return binary(cpu::EwOp::Mul, a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale,
                out_zero_point, relu, out_dtype);
}

at::Tensor add_scalar_cpu(const at::Tensor& a, const at::Tensor& a_scale,
                          const at::Tensor& a_zero_point, double other,
                          const at::Tensor& out_scale, const at::Tensor& out_zero_point,
                          std::optional<at::ScalarType> out_dtype) {
  const EwScalarArgs q = ew_scalar_args(a, a_scale, a_zero_point, out_scale, out_zero_point, out_dtype);
  return unary(a, q.a, q.a.scale, static_cast<float>(other), q.out, q.odt);
}

at::Tensor mul_scalar_cpu(const at::Tensor& a, const at::Tensor& a_scale,
                          const at::Tensor& a_zero_point, double other,
                          const at::Tensor& out_scale, const at::Tensor& out_zero_point,
                          std::optional<at::ScalarType> out_dtype) {
  const EwScalarArgs q = ew_scalar_args(a, a_scale, a_zero_point, out_scale, out_zero_point, out_dtype);
  return unary(a, q.a, q.a.scale * static_cast<float>(other), 0.0f, q.out, q.odt);
}

at::Tensor cat_cpu(at::TensorList tensors, at::TensorList scales, at::TensorList zero_points,
                   int64_t dim, const at::Tensor& out_scale, const at::Tensor& out_zero_point,
                   std::optional<at::ScalarType> out_dtype) {
  const EwCatArgs q = ew_cat_args(tensors, scales, zero_points, out_scale, out_zero_point, out_dtype);
  // The output as at::cat makes it (shape, memory format, torch's checks and messages); each
  // input is then requantized (or copied, where its qparams are the output's) straight into its
  // slice: one pass, no temporaries.
  at::Tensor out = cat_output(tensors, dim, q.odt);
  if (out.numel() == 0) return out;
  const int64_t d = at::maybe_wrap_dim(dim, out.dim());
  int64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& x = tensors[i];
    if (cat_skips(x)) continue;
    const int64_t len = x.size(d);
    at::Tensor slice = out.narrow(d, offset, len);
    offset += len;
    if (x.numel() == 0) continue;
    const EwQParams& qx = q.in[i];
    if (x.scalar_type() == q.odt && qx.scale == q.out.scale && qx.zero_point == q.out.zero_point &&
        copy_is_exact(qx.scale)) {
      slice.copy_(x);
    } else {
      unary_into(slice, x, unary_params(x, qx, qx.scale, 0.0f, q.out, q.odt));
    }
  }
  return out;
}

at::Tensor lookup_table_cpu(const at::Tensor& a, const at::Tensor& table) {
  check_lookup_table_args(a, table);
  // The output's layout is empty_like's (a's strides where a is dense, as the fake kernel
  // gives); the input is read in that same element order, copied into it where a is not dense.
  at::Tensor out = at::empty_like(a, a.options().dtype(table.scalar_type()));
  const at::Tensor ac = a.strides() == out.strides() ? a : at::empty_like(out, a.options()).copy_(a);
  const at::Tensor t = table.contiguous();
  const uint8_t* src = static_cast<const uint8_t*>(ac.data_ptr());
  const uint8_t* lut = static_cast<const uint8_t*>(t.data_ptr());
  uint8_t* dst = static_cast<uint8_t*>(out.data_ptr());
  // An int8 code c is entry c + 128: its byte with the sign bit flipped.
  const uint8_t flip = a.scalar_type() == at::kChar ? 0x80 : 0x00;
  // Scalar: one table load per byte (about a byte per cycle); AVX2: sixteen vpshufb per 32 bytes;
  // AVX-512 VBMI: two vpermi2b per 64 bytes, at memory speed.
  static const bool vbmi = cpu::cpu_has_avx512vbmi();
  const CpuIsa isa = cpu_isa();
  auto* kernel = isa == CpuIsa::Scalar                   ? cpu::lookup_table__scalar
                 : is_avx512_class(isa) && vbmi ? cpu::lookup_table__avx512vbmi
                                                         : cpu::lookup_table__avx2;
  at::parallel_for(0, ac.numel(), int64_t{1} << 16, [&](int64_t begin, int64_t end) {
    kernel(src + begin, lut, dst + begin, end - begin, flip);
  });
  return out;
}

TORCH_LIBRARY_IMPL(torchquant, CPU, m) {
  m.impl("lookup_table", &lookup_table_cpu);
  m.impl("add", &add_cpu);
  m.impl("mul", &mul_cpu);
  m.impl("add_scalar", &add_scalar_cpu);
  m.impl("mul_scalar", &mul_scalar_cpu);
  m.impl("cat", &cat_cpu);
}

}  // namespace torchquant
