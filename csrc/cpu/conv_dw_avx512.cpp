// AVX-512 VNNI depthwise int8 convolution: the kernel of conv_dw_vnni_impl.h (where its design is
// described) on AVX512VL's 256-bit registers.
#include "cpu/conv_kernels.h"
#include "cpu/isa.h"

#if TQ_X86
#define TQ_DW_TARGET TQ_TARGET_AVX512VNNI
#define TQ_DW_DPBUSD _mm256_dpbusd_epi32
#define TQ_DW_AVX512 1
#define TQ_DW_ENTRY conv_dw__avx512vnni
#include "cpu/conv_dw_vnni_impl.h"
#else
namespace torchquant {
namespace cpu {
void conv_dw__avx512vnni(const DwProblem& p, int64_t r0, int64_t r1) { conv_dw__scalar(p, r0, r1); }
}  // namespace cpu
}  // namespace torchquant
#endif
