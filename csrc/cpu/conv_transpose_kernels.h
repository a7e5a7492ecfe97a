// Raw-pointer kernels of the CPU int8 transposed convolution (no torch headers: the SIMD files
// include it).
//
// conv_transpose.cpp multiplies input pixels with the packed weight on the GEMM micro-kernels
// (int32 output: the zero-point-corrected sums of each input pixel and tap), scatter-adds them
// into an int32 tile of output pixels, and hands the finished tile to the epilogue below: the
// requantize of gemm_kernels.h (gemm_epilogue_one, or a vector copy of it with the same
// float32 operations in the same order), so every variant gives the same bits.
#pragma once

#include <cstdint>

#include "cpu/gemm_kernels.h"

namespace torchquant {
namespace cpu {

// Writes output rows [0, rows), columns [0, n): corr(m, j) = acc[m * lda + j] (already
// zero-point corrected) goes through the epilogue of p (a_scale, w_scale[j], bias[j], relu,
// out_kind, out_inv_scale, out_zp, nan_free) to p.out row m (p.ldo elements apart).
#define TQ_DECLARE_CT_KERNELS(SUFFIX)                                                        \
  void conv_transpose_epilogue__##SUFFIX(const GemmProblem& p, const int32_t* acc, int64_t lda, \
                                         int64_t rows, int64_t n);

TQ_DECLARE_CT_KERNELS(scalar)
TQ_DECLARE_CT_KERNELS(avx2)
TQ_DECLARE_CT_KERNELS(avx512vnni)

#undef TQ_DECLARE_CT_KERNELS

}  // namespace cpu
}  // namespace torchquant
