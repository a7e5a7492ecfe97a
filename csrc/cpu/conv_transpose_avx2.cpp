// AVX2 epilogue of the int8 transposed convolution: the GEMM's epilogue (epilogue_avx2.h) on
// sums that are already zero-point corrected; the last n % 8 columns go through the oracle
// itself.
#include <immintrin.h>

#include "cpu/conv_transpose_kernels.h"
#include "cpu/epilogue_avx2.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
TQ_TARGET_AVX2 void conv_transpose_epilogue__avx2(const GemmProblem& p, const int32_t* acc,
                                                  int64_t lda, int64_t rows, int64_t n) {
  const __m256 vas = _mm256_set1_ps(p.a_scale);
  const EpiConsts256 e = epi_consts256(p);
  for (int64_t m = 0; m < rows; ++m) {
    const int32_t* a = acc + m * lda;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const __m256i corr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + j));
      const __m256 s = p.out_kind == GemmOut::Int32 ? e.zero
                                                    : _mm256_mul_ps(vas, _mm256_loadu_ps(p.w_scale + j));
      epilogue_chunk8(p, e, corr, s, p.bias != nullptr ? p.bias + j : nullptr, m * p.ldo + j);
    }
    for (; j < n; ++j) gemm_epilogue_one(p, m, j, a[j], p.a_scale);
  }
}
#else
void conv_transpose_epilogue__avx2(const GemmProblem& p, const int32_t* acc, int64_t lda,
                                   int64_t rows, int64_t n) {
  conv_transpose_epilogue__scalar(p, acc, lda, rows, n);
}
#endif

}  // namespace cpu
}  // namespace torchquant
