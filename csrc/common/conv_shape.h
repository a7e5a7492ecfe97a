// The shape of an int8 convolution as every backend sees it (plain C++, no torch headers: the
// SIMD files and the CUDA kernels include it). Every convolution is held as a 3-d one: a 1-d /
// 2-d problem has depth (and height) 1, kernel 1, stride 1, padding 0 and dilation 1 in the
// missing dimensions. Activations and outputs are channels-last: [N, D, H, W, C].
#pragma once

#include <cstdint>

namespace torchquant {

struct ConvGeometry {
  int64_t N = 0, C = 0;                 // batch, input channels
  int64_t in[3] = {1, 1, 1};            // D, H, W
  int64_t out[3] = {1, 1, 1};           // OD, OH, OW
  int64_t k[3] = {1, 1, 1};             // KD, KH, KW
  int64_t stride[3] = {1, 1, 1};
  int64_t pad[3] = {0, 0, 0};
  int64_t dil[3] = {1, 1, 1};
  int64_t taps() const { return k[0] * k[1] * k[2]; }
  int64_t out_pixels() const { return N * out[0] * out[1] * out[2]; }
};

}  // namespace torchquant
