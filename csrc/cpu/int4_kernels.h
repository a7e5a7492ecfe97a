// Raw-pointer kernels of the CPU int4 weight-only Linear, one per ISA (scalar, avx2,
// avx512vnni), with one packed layout shared by all of them.
//
// Weight format (docs/quantization.md, "int4 weight-only"): w[n, k] ~ s[n, g] * (q[n, k] - z[n, g])
// with q, z in [0, 15], g = k / group_size. The kernel layout pads K up to Kp = G * group_size
// (G = ceil(K / group_size)) and cuts the N output channels into panels of 16 (past N: q = z = 0,
// s = 0). w_packed is uint8 [P, G, R], R = 8 * group_size + 128 bytes (a multiple of 64): one
// record per panel p and group g, so that a thread's slice of panels is one sequential stream,
// weights and qparams together (separate qparam arrays were extra streams the hardware
// prefetchers served worse):
//   bytes [0, 8 * group_size): group_size / 8 blocks of 64 bytes; block b covers
//             k0 = g * group_size + 8b .. k0 + 7; byte 4c + j (channel c of the panel, j = 0..3)
//             holds q[16p + c, k0 + j] in its low nibble and q[16p + c, k0 + 4 + j] in its high
//             nibble. Padded k hold q = z (they add nothing). Four low nibbles of a channel are
//             one int32 lane of vpdpbusd's unsigned operand.
//   then      float32 s[16p + c, g] for c = 0..15 (64 bytes),
//             int16 z[16p + c, g] (32 bytes),
//             int16 wz[16p + c, g] = sum over the group of (q - z) (|wz| <= 15 * group_size fits
//             int16) (32 bytes).
// w_qp and w_scale are empty on the CPU (the op keeps one signature for every device).
//
// Activations are quantized per row with the dynamic path's affine int8 qparams (x_scale[m],
// x_zp[m], torch.ao's choose_qparams per row; quantize_rows__* of gemm_kernels.h) into rows of
// Kp int8 (zeros past K), and xsum[m, g] = sum of the row's int8 values over group g. Then, for
// output (m, n), exactly:
//   corr_g = acc_g - z * xsum[m, g] - x_zp[m] * wz      (acc_g = sum_k xq[m, k] * q[n, k], int32)
//          = sum_{k in g} (xq - x_zp) * (q - z)
//   y = 0; for g = 0 .. G-1: y = y + (float)corr_g * s[n, g]      (float32, multiply then add)
//   y = y * x_scale[m];  y = y + bias[n] (when given)
// |corr_g| <= 255 * 15 * group_size < 2^24 (group_size <= 2048), so (float)corr_g is exact and
// every variant computes the same float32 operations in the same order: bit-identical results.
#pragma once

#include <cstdint>

namespace torchquant {
namespace cpu {

constexpr int64_t kInt4Panel = 16;
constexpr int64_t kInt4Block = 8;          // k per 64-byte block
constexpr int64_t kInt4MaxGroup = 2048;    // keeps |wz| <= 15 * 2048 in int16, |corr_g| < 2^24
constexpr int64_t kInt4QpBytes = 128;      // s, z, wz of a record's 16 channels

// Bytes of one (panel, group) record of w_packed.
inline int64_t int4_record_bytes(int64_t group_size) { return group_size / kInt4Block * 64 + kInt4QpBytes; }

struct Int4Problem {
  int64_t M = 0, N = 0, Kp = 0, G = 0, group_size = 0;
  const uint8_t* w = nullptr;        // [P, G, R], 4-byte aligned
  int64_t R = 0;                     // int4_record_bytes(group_size)
  const int8_t* xq = nullptr;        // [M, Kp]
  const int32_t* xsum = nullptr;     // [M, G]
  const float* x_scale = nullptr;    // [M]
  const int32_t* x_zp = nullptr;     // [M]
  const float* bias = nullptr;       // [N] or null
  float* out = nullptr;              // [M, N]
};

#define TQ_DECLARE_INT4_KERNELS(SUFFIX)                                                      \
  /* Outputs of rows [m0, m1) and the channels of panels [p0, p1). */                         \
  void int4_compute__##SUFFIX(const Int4Problem& p, int64_t m0, int64_t m1, int64_t p0,      \
                              int64_t p1);

TQ_DECLARE_INT4_KERNELS(scalar)
TQ_DECLARE_INT4_KERNELS(avx2)
TQ_DECLARE_INT4_KERNELS(avxvnni)
TQ_DECLARE_INT4_KERNELS(avx512vnni)

#undef TQ_DECLARE_INT4_KERNELS

// The parts of the record of panel pi, group g.
struct Int4Record {
  const uint8_t* w;     // group_size / 8 blocks of 64 bytes
  const float* s;       // [16]
  const int16_t* z;     // [16]
  const int16_t* wz;    // [16]
};
inline Int4Record int4_record(const Int4Problem& p, int64_t pi, int64_t g) {
  const uint8_t* r = p.w + (pi * p.G + g) * p.R;
  const uint8_t* q = r + p.R - kInt4QpBytes;
  return {r, reinterpret_cast<const float*>(q), reinterpret_cast<const int16_t*>(q + 64),
          reinterpret_cast<const int16_t*>(q + 96)};
}

// The one-output epilogue step shared by every variant (see above).
inline float int4_group_step(float y, int32_t acc, int32_t z, int32_t xsum, int32_t xzp, int32_t wz,
                             float s) {
  const int32_t corr = acc - z * xsum - xzp * wz;
  return y + static_cast<float>(corr) * s;
}

}  // namespace cpu
}  // namespace torchquant
