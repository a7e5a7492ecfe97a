// Scalar int4 weight-only Linear: the oracle the SIMD variants match bit for bit (layout and
// arithmetic in int4_kernels.h).
#include "cpu/int4_kernels.h"

namespace torchquant {
namespace cpu {

void int4_compute__scalar(const Int4Problem& p, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const int64_t blocks_per_group = p.group_size / kInt4Block;
  for (int64_t pi = p0; pi < p1; ++pi) {
    for (int64_t m = m0; m < m1; ++m) {
      const int8_t* x = p.xq + m * p.Kp;
      float y[kInt4Panel] = {};
      for (int64_t g = 0; g < p.G; ++g) {
        const Int4Record rec = int4_record(p, pi, g);
        int32_t acc[kInt4Panel] = {};
        for (int64_t b = 0; b < blocks_per_group; ++b) {
          const uint8_t* blk = rec.w + b * 64;
          const int8_t* xb = x + g * p.group_size + b * kInt4Block;
          for (int c = 0; c < kInt4Panel; ++c) {
            int32_t a = 0;
            for (int j = 0; j < 4; ++j) {
              const uint8_t v = blk[4 * c + j];
              a += static_cast<int32_t>(v & 0x0F) * xb[j] + static_cast<int32_t>(v >> 4) * xb[4 + j];
            }
            acc[c] += a;
          }
        }
        const int32_t xs = p.xsum[m * p.G + g];
        for (int c = 0; c < kInt4Panel; ++c)
          y[c] = int4_group_step(y[c], acc[c], rec.z[c], xs, p.x_zp[m], rec.wz[c], rec.s[c]);
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
