// Raw-pointer kernels of the int8 pooling ops (cpu/pool.cpp), declared together for every ISA
// so that dispatch and tests can swap them.
//
// The input is [N, C, D, H, W] (1-d and 2-d pooling have unit D, H), either channels-last
// (C innermost: pixel (n, d, h, w) at ((n * D + d) * H + h) * W + w, times C) or planar
// (contiguous NCDHW). The windows are boxes given per dimension by tables (common/pool_shape.h):
// along dimension j, output index o reads taps[j][o] input indices first[j][o] + t * step[j].
//
//   max:  the largest code of the window (the dtype's minimum for a window of padding only);
//   avg:  S = sum over the window of (q - zp), exact in integers, count = divisor_override or
//         div[0][od] * div[1][oh] * div[2][ow], then
//         y = clamp(nearbyint(float(S) * (1.0f / float(count))) + zp) to the dtype's range,
//         every step in float32 (round half to even) as torch's quantized average pooling.
// The SIMD variants vectorize channels-last along C and give bit-identical results; planar
// data goes through the scalar loops in every variant.
#pragma once

#include <cstdint>

namespace torchquant {
namespace cpu {

struct PoolArgs {
  const uint8_t* x = nullptr;
  uint8_t* y = nullptr;
  int64_t N = 0, C = 0;
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, step[3] = {1, 1, 1};
  const int32_t* first[3] = {nullptr, nullptr, nullptr};
  const int32_t* taps[3] = {nullptr, nullptr, nullptr};
  const int32_t* div[3] = {nullptr, nullptr, nullptr};
  int64_t divisor_override = 0;  // 0: none
  int32_t zp = 0;
  bool is_unsigned = true;
};

// Channels-last: output pixels [p0, p1) (flat over N, OD, OH, OW), channels [c0, c1).
// Planar: output rows [r0, r1) (flat over N, C, OD, OH), each of OW outputs.
#define TQ_DECLARE_POOL_KERNELS(SUFFIX)                                                          \
  void max_pool_cl__##SUFFIX(const PoolArgs& a, int64_t p0, int64_t p1, int64_t c0, int64_t c1); \
  void avg_pool_cl__##SUFFIX(const PoolArgs& a, int64_t p0, int64_t p1, int64_t c0, int64_t c1); \
  void max_pool_planar__##SUFFIX(const PoolArgs& a, int64_t r0, int64_t r1);                     \
  void avg_pool_planar__##SUFFIX(const PoolArgs& a, int64_t r0, int64_t r1);

TQ_DECLARE_POOL_KERNELS(scalar)
TQ_DECLARE_POOL_KERNELS(avx2)

#undef TQ_DECLARE_POOL_KERNELS

// The largest window (valid taps) whose sums the SIMD variants keep in int32:
// 255 * taps < 2^31. Larger windows go to the scalar kernels (int64 sums).
constexpr int64_t kPoolMaxTapsInt32 = 8421504;

}  // namespace cpu
}  // namespace torchquant
