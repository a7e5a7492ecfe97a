// Scalar int4 weight-only Linear: the oracle the SIMD variants match bit for bit (layout and
// arithmetic in int4_kernels.h).
#include "cpu/int4_kernels.h"

namespace torchquant {
namespace cpu {

void int4_compute__scalar(const Int4Problem& p, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const int64_t blocks_per_group = p.group_size / kInt4Block;
  const int64_t nb = p.Kp / kInt4Block;
  for (int64_t pi = p0; pi < p1; ++pi) {
    const uint8_t* wp = p.w + pi * nb * 64;
    for (int64_t m = m0; m < m1; ++m) {
      const int8_t* x = p.xq + m * p.Kp;
      float y[kInt4Panel] = {};
      for (int64_t g = 0; g < p.G; ++g) {
        int32_t acc[kInt4Panel] = {};
        for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
          const uint8_t* blk = wp + b * 64;
          const int8_t* xb = x + b * kInt4Block;
          for (int c = 0; c < kInt4Panel; ++c) {
            int32_t a = 0;
            for (int j = 0; j < 4; ++j) {
              const uint8_t v = blk[4 * c + j];
              a += static_cast<int32_t>(v & 0x0F) * xb[j] + static_cast<int32_t>(v >> 4) * xb[4 + j];
            }
            acc[c] += a;
          }
        }
        const int16_t* qp = p.qp + (pi * p.G + g) * 32;
        const float* s = p.ws + (pi * p.G + g) * kInt4Panel;
        const int32_t xs = p.xsum[m * p.G + g];
        for (int c = 0; c < kInt4Panel; ++c)
          y[c] = int4_group_step(y[c], acc[c], qp[c], xs, p.x_zp[m], qp[16 + c], s[c]);
      }
      for (int c = 0; c < kInt4Panel; ++c) {
        const int64_t n = pi * kInt4Panel + c;
        if (n >= p.N) break;
        float v = y[c] * p.x_scale[m];
        if (p.bias != nullptr) v = v + p.bias[n];
        p.out[m * p.N + n] = v;
      }
    }
  }
}

}  // namespace cpu
}  // namespace torchquant
