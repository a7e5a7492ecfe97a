// Scalar epilogue of the int8 transposed convolution: the one-element oracle of gemm_kernels.h.
#include "cpu/conv_transpose_kernels.h"

namespace torchquant {
namespace cpu {

void conv_transpose_epilogue__scalar(const GemmProblem& p, const int32_t* acc, int64_t lda,
                                     int64_t rows, int64_t n) {
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t j = 0; j < n; ++j) gemm_epilogue_one(p, m, j, acc[m * lda + j], p.a_scale);
  }
}

}  // namespace cpu
}  // namespace torchquant
