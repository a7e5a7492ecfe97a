// The tensor-core implicit-GEMM int8 convolution (conv_mma.cu), called by conv_int8's CUDA
// driver (conv.cu) for grouped and ordinary convolutions on sm_80 and later, and the geometry
// helpers both files' kernels use.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/conv_shape.h"
#include "cuda/common.cuh"
#include "cuda/gemm.cuh"

namespace torchquant {
namespace cuda {

// Output pixel m (flat over N, OD, OH, OW) as coordinates; shared by the direct kernels (conv.cu)
// and the tensor-core one.
__device__ __forceinline__ void conv_pixel_of(const ConvGeometry& g, int64_t m, int64_t* n, int64_t* od,
                                              int64_t* oh, int64_t* ow) {
  *ow = m % g.out[2];
  *oh = (m / g.out[2]) % g.out[1];
  *od = (m / (g.out[2] * g.out[1])) % g.out[0];
  *n = m / (g.out[2] * g.out[1] * g.out[0]);
}

// Whether input position (id, ih, iw) lies inside the input (else a padded tap: the zero point).
__device__ __forceinline__ bool conv_inside(const ConvGeometry& g, int64_t id, int64_t ih, int64_t iw) {
  return id >= 0 && id < g.in[0] && ih >= 0 && ih < g.in[1] && iw >= 0 && iw < g.in[2];
}

// One convolution's GEMM shape: per group, Kg = taps * Cg rows of the packed weight
// [groups, Kg, Ng] (k = tap * Cg + c, output channel innermost).
struct ConvMmaArgs {
  ConvGeometry g;
  int64_t groups = 1, Cg = 0, Ng = 0, Kg = 0;
  int64_t P = 0;  // output pixels (set by launch_conv_mma)
};

// TORCHQUANT_CUDA_CONV=auto|direct|mma (read per call). auto stays on the direct kernels until
// the tensor-core kernel has been run on a GPU (docs/cuda.md).
enum class ConvPath { Auto, Direct, Mma };
ConvPath conv_path();

// Whether the tensor-core kernel takes this problem on the current device.
bool conv_mma_applies(const ConvMmaArgs& c);

// out (through e) = the convolution of the channels-last x (uint8 when x_uint8, else int8) with
// the packed weight w, e applied to every output element: the direct kernel's results bit for bit.
void launch_conv_mma(const void* x, bool x_uint8, const int8_t* w, const ConvMmaArgs& c, const Epilogue& e,
                     cudaStream_t stream);

}  // namespace cuda
}  // namespace torchquant
