#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>

#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <c10/util/Exception.h>

namespace torchquant {
namespace {

// AMX tiles need the kernel's permission to use their state (Linux 5.16 and later:
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)); once granted it holds for every thread
// of the process. Asked once.
bool amx_granted() {
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
  static const bool granted = [] {
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-int8")) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
#else
  return false;
#endif
}

bool cpu_has(CpuIsa isa) {
#if TQ_X86
  switch (isa) {
    case CpuIsa::Scalar:
      return true;
    case CpuIsa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::AvxVnni:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("avxvnni");
    case CpuIsa::Avx512Vnni:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni");
    case CpuIsa::Amx:
      return cpu_has(CpuIsa::Avx512Vnni) && amx_granted();
  }
  return false;
#else
  return isa == CpuIsa::Scalar;
#endif
}

CpuIsa parse(const std::string& name) {
  if (name == "scalar") return CpuIsa::Scalar;
  if (name == "avx2") return CpuIsa::Avx2;
  if (name == "avxvnni") return CpuIsa::AvxVnni;
  if (name == "avx512vnni") return CpuIsa::Avx512Vnni;
  if (name == "amx") return CpuIsa::Amx;
  TORCH_CHECK(false, "unknown CPU ISA '", name,
              "' (argument 'isa'); expected one of auto, scalar, avx2, avxvnni, avx512vnni, amx");
}

CpuIsa checked(CpuIsa isa, const std::string& name, const char* source) {
  TORCH_CHECK(cpu_has(isa), "CPU ISA '", name, "' requested by ", source,
              " but this CPU does not support it (best available: ",
              cpu_isa_name(cpu_isa_detected()), ")");
  return isa;
}

// The environment variable's choice. A value that is no ISA, or one this CPU lacks, must not
// make the static below throw: its initialization would be retried, and fail, in every op and
// in set_cpu_isa too. Detection is used instead; torchquant/isa.py reports the value with one
// warning at import (a TORCH_WARN here would reach C++'s stderr, not Python's warnings).
CpuIsa initial() {
  const char* env = std::getenv("TORCHQUANT_CPU_ISA");
  if (env == nullptr) return cpu_isa_detected();
  const std::string name(env);
  for (CpuIsa isa :
       {CpuIsa::Scalar, CpuIsa::Avx2, CpuIsa::AvxVnni, CpuIsa::Avx512Vnni, CpuIsa::Amx}) {
    if (name == cpu_isa_name(isa) && cpu_has(isa)) return isa;
  }
  return cpu_isa_detected();
}

std::atomic<int>& current() {
  static std::atomic<int> isa{static_cast<int>(initial())};
  return isa;
}

}  // namespace

CpuIsa cpu_isa_detected() {
  static const CpuIsa best = cpu_has(CpuIsa::Amx)          ? CpuIsa::Amx
                             : cpu_has(CpuIsa::Avx512Vnni) ? CpuIsa::Avx512Vnni
                             : cpu_has(CpuIsa::AvxVnni)  ? CpuIsa::AvxVnni
                             : cpu_has(CpuIsa::Avx2)     ? CpuIsa::Avx2
                                                         : CpuIsa::Scalar;
  return best;
}

CpuIsa cpu_isa() { return static_cast<CpuIsa>(current().load(std::memory_order_relaxed)); }

void set_cpu_isa(const std::string& name) {
  CpuIsa isa = name == "auto" ? cpu_isa_detected() : checked(parse(name), name, "set_cpu_isa");
  current().store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Scalar:
      return "scalar";
    case CpuIsa::Avx2:
      return "avx2";
    case CpuIsa::AvxVnni:
      return "avxvnni";
    case CpuIsa::Avx512Vnni:
      return "avx512vnni";
    case CpuIsa::Amx:
      return "amx";
  }
  return "unknown";
}

}  // namespace torchquant
