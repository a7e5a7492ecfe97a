// Raw-pointer kernels of the CPU int8 convolution (no torch headers: the SIMD files include it).
//
// Every convolution is handled as a 3-d one: a 1-d / 2-d problem has depth (and height) 1,
// kernel 1, stride 1, padding 0 and dilation 1 in the missing dimensions. Activations are
// channels-last ([N, D, H, W, C], C contiguous), as are outputs.
//
// The general case runs on the GEMM micro-kernels of gemm_kernels.h (conv.cpp builds im2col
// tiles of a few hundred output pixels in scratch and hands them to gemm_compute__<isa>); the
// depthwise case (one input and one output channel per group) has kernels of its own here,
// direct loops over the taps vectorised across channels. Both end in the requantize epilogue
// of gemm_kernels.h (gemm_epilogue_one or a vector copy of it with the same float32
// operations), so every variant gives the same bits.
#pragma once

#include <cstdint>

#include "common/conv_shape.h"
#include "cpu/gemm_kernels.h"

namespace torchquant {
namespace cpu {

// Depthwise problem: output channel c reads input channel c only.
struct DwProblem {
  ConvGeometry g;
  const void* x = nullptr;       // [N, D, H, W, C] int8 / uint8
  const int8_t* w = nullptr;     // [taps, C], tap order (kd, kh, kw)
  // The epilogue: col_sums, a_scale, a_zp, a_unsigned, w_scale, bias, relu, out_kind,
  // out_inv_scale, out_zp as for a GEMM with N = C; out / ldo are set per output row by the
  // kernel (ldo = C). out_base is the output [N, OD, OH, OW, C].
  GemmProblem e;
  void* out_base = nullptr;
};

// Output rows [r0, r1), row r = (n, od, oh) in row-major order; each row is OW pixels x C.
#define TQ_DECLARE_DW_KERNELS(SUFFIX) \
  void conv_dw__##SUFFIX(const DwProblem& p, int64_t r0, int64_t r1);

TQ_DECLARE_DW_KERNELS(scalar)
TQ_DECLARE_DW_KERNELS(avx2)
TQ_DECLARE_DW_KERNELS(avxvnni)     // conv_dw_vnni_impl.h, VEX vpdpbusd
TQ_DECLARE_DW_KERNELS(avx512vnni)  // conv_dw_vnni_impl.h on 256-bit registers (it says why)

#undef TQ_DECLARE_DW_KERNELS

// Bytes per element of each output kind.
inline int64_t gemm_out_bytes(GemmOut k) {
  return k == GemmOut::QInt8 || k == GemmOut::QUInt8 ? 1 : 4;
}

}  // namespace cpu
}  // namespace torchquant
