// AVX-512 epilogue of the int8 transposed convolution: the GEMM's epilogue (epilogue_avx512.h)
// on sums that are already zero-point corrected; a last chunk of fewer than 16 columns runs
// under a lane mask.
#include <immintrin.h>

#include "cpu/conv_transpose_kernels.h"
#include "cpu/epilogue_avx512.h"
#include "cpu/isa.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
TQ_TARGET_AVX512VNNI void conv_transpose_epilogue__avx512vnni(const GemmProblem& p,
                                                              const int32_t* acc, int64_t lda,
                                                              int64_t rows, int64_t n) {
  const __m512 vas = _mm512_set1_ps(p.a_scale);
  const EpiConsts512 e = epi_consts512(p);
  for (int64_t m = 0; m < rows; ++m) {
    const int32_t* a = acc + m * lda;
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 k =
          n - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1u);
      const __m512i corr = _mm512_maskz_loadu_epi32(k, a + j);
      const __m512 s = p.out_kind == GemmOut::Int32
                           ? e.zero
                           : _mm512_mul_ps(vas, _mm512_maskz_loadu_ps(k, p.w_scale + j));
      epilogue_chunk16(p, e, corr, s, p.bias != nullptr ? p.bias + j : nullptr, k, m * p.ldo + j);
    }
  }
}
#else
void conv_transpose_epilogue__avx512vnni(const GemmProblem& p, const int32_t* acc, int64_t lda,
                                         int64_t rows, int64_t n) {
  conv_transpose_epilogue__scalar(p, acc, lda, rows, n);
}
#endif

}  // namespace cpu
}  // namespace torchquant
