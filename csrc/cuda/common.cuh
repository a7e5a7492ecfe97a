// Helpers shared by the CUDA kernels: launch geometry, aligned vector access.
//
// Only c10/cuda headers are used (not ATen/cuda/CUDAContext.h): those pull in cuSPARSE and
// cuSOLVER headers that a CUDA toolkit without the math libraries does not have.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

namespace torchquant {
namespace cuda {

constexpr int kThreads = 256;

// A grid for a grid-stride loop over `work` items: enough blocks to fill every SM several
// times over, never more than the work needs (each block runs kThreads items per round).
inline unsigned grid_for(int64_t work, int threads = kThreads) {
  static thread_local int sms = -1;
  static thread_local int sms_device = -1;
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  if (sms < 0 || sms_device != dev) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    sms_device = dev;
  }
  const int64_t needed = (work + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(sms) * 8;
  const int64_t g = needed < cap ? needed : cap;
  return static_cast<unsigned>(g < 1 ? 1 : g);
}

__host__ __device__ inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// V elements of T as one unit aligned to min(its size, 16 bytes), so that a load or store of it
// compiles to 16-byte vector instructions (one for 4 floats or 16 int8, four for 16 floats).
template <class T, int V>
struct alignas(sizeof(T) * V < 16 ? sizeof(T) * V : 16) Vec {
  T v[V];
};

template <class T, int V>
__device__ __forceinline__ Vec<T, V> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, V>*>(p);
}

template <class T, int V>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, V>& v) {
  *reinterpret_cast<Vec<T, V>*>(p) = v;
}

// The kernel choice an environment variable forces (read per call, so that tests can switch it):
// the position of its value in `choices`, 0 (the first choice, "auto") when unset or empty; any
// other value is an error naming the variable and the choices.
inline int env_choice(const char* var, std::initializer_list<const char*> choices) {
  const char* v = std::getenv(var);
  if (v == nullptr || *v == '\0') return 0;
  int i = 0;
  std::string names;
  for (const char* c : choices) {
    if (std::strcmp(v, c) == 0) return i;
    names += (i == 0 ? "" : (i + 1 == static_cast<int>(choices.size()) ? " or " : ", "));
    names += c;
    ++i;
  }
  TORCH_CHECK(false, "environment variable ", var, " must be ", names, ", got '", v, "'");
  return 0;
}

}  // namespace cuda
}  // namespace torchquant
