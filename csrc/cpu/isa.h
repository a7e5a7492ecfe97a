// Run-time choice of the CPU kernel variant.
//
// Every CPU kernel has a scalar version and SIMD versions with the same signature. The
// SIMD code is compiled with per-function target attributes (see TQ_TARGET_* below), so the
// whole library builds with the compiler's baseline flags and still runs on a CPU without
// AVX2: a variant is only called after CPUID says the CPU has it.
// TORCHQUANT_CPU_ISA=scalar|avx2|avxvnni|avx512vnni|amx forces a variant (tests and benchmarks).
// avxvnni is AVX2 with AVX-VNNI (vpdpbusd on 256-bit registers: Intel since Alder Lake, AMD
// since Zen 5, most without AVX-512): the AVX2 kernels, except the int8 GEMM's multiply.
// amx is AVX-512 VNNI with AMX-INT8 tiles (Intel since Sapphire Rapids): the AVX-512 VNNI
// kernels, except the packed int8 GEMM of the convolutions and Linear layers with enough rows
// (gemm_amx.cpp). Linux only: the kernel must grant the process the tile state.
#pragma once

#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#define TQ_X86 1
#define TQ_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define TQ_TARGET_AVXVNNI __attribute__((target("avx2,fma,avxvnni")))
#define TQ_TARGET_AVX512VNNI \
  __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define TQ_TARGET_AMX                                                                    \
  __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile," \
                        "amx-int8")))
#else
#define TQ_X86 0
#define TQ_TARGET_AVX2
#define TQ_TARGET_AVXVNNI
#define TQ_TARGET_AVX512VNNI
#define TQ_TARGET_AMX
#endif

namespace torchquant {

enum class CpuIsa : int { Scalar = 0, Avx2 = 1, AvxVnni = 2, Avx512Vnni = 3, Amx = 4 };

// Whether the variant runs the AVX2 kernels (AVX2 itself, and AVX-VNNI everywhere but the GEMM).
inline bool is_avx2_class(CpuIsa isa) { return isa == CpuIsa::Avx2 || isa == CpuIsa::AvxVnni; }
// Whether the variant runs the AVX-512 VNNI kernels (AVX-512 VNNI itself, and AMX everywhere but
// the packed GEMM).
inline bool is_avx512_class(CpuIsa isa) { return isa == CpuIsa::Avx512Vnni || isa == CpuIsa::Amx; }

// The best variant this CPU supports.
CpuIsa cpu_isa_detected();
// The variant kernels use now: forced by set_cpu_isa / TORCHQUANT_CPU_ISA, else detected.
CpuIsa cpu_isa();
// Forces a variant; raises if the CPU lacks it. "auto" goes back to detection.
void set_cpu_isa(const std::string& name);
const char* cpu_isa_name(CpuIsa isa);

}  // namespace torchquant
