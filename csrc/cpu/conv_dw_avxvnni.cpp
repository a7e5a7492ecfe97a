// AVX-VNNI depthwise int8 convolution (Intel since Alder Lake, AMD since Zen 5, most without
// AVX-512): the kernel of conv_dw_vnni_impl.h with the VEX form of vpdpbusd; a partial channel
// block is loaded and stored through a buffer (no byte masks before AVX-512).
#include "cpu/conv_kernels.h"
#include "cpu/isa.h"

#if TQ_X86
#define TQ_DW_TARGET TQ_TARGET_AVXVNNI
#define TQ_DW_DPBUSD _mm256_dpbusd_avx_epi32
#define TQ_DW_AVX512 0
#define TQ_DW_ENTRY conv_dw__avxvnni
#include "cpu/conv_dw_vnni_impl.h"
#else
namespace torchquant {
namespace cpu {
void conv_dw__avxvnni(const DwProblem& p, int64_t r0, int64_t r1) { conv_dw__scalar(p, r0, r1); }
}  // namespace cpu
}  // namespace torchquant
#endif
