// Scalar depthwise int8 convolution: the plain-C++ variant, one output at a time, int64 sums
// and the one-element epilogue of gemm_kernels.h. A padded position holds the activation zero
// point (it dequantizes to 0), so every tap contributes x * w and the correction subtracts
// a_zp * col_sums[c] as for a GEMM.
#include "cpu/conv_kernels.h"

namespace torchquant {
namespace cpu {

void conv_dw__scalar(const DwProblem& p, int64_t r0, int64_t r1) {
  const ConvGeometry& g = p.g;
  const int64_t C = g.C, OW = g.out[2];
  const int64_t ob = gemm_out_bytes(p.e.out_kind);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t oh = r % g.out[1], od = (r / g.out[1]) % g.out[0], n = r / (g.out[1] * g.out[0]);
    GemmProblem e = p.e;
    e.out = static_cast<char*>(p.out_base) + r * OW * C * ob;
    e.ldo = C;
    for (int64_t ow = 0; ow < OW; ++ow) {
      for (int64_t c = 0; c < C; ++c) {
        int64_t acc = 0, tap = 0;
        for (int64_t kd = 0; kd < g.k[0]; ++kd) {
          const int64_t id = od * g.stride[0] - g.pad[0] + kd * g.dil[0];
          for (int64_t kh = 0; kh < g.k[1]; ++kh) {
            const int64_t ih = oh * g.stride[1] - g.pad[1] + kh * g.dil[1];
            for (int64_t kw = 0; kw < g.k[2]; ++kw, ++tap) {
              const int64_t iw = ow * g.stride[2] - g.pad[2] + kw * g.dil[2];
              int64_t x = p.e.a_zp;
              if (id >= 0 && id < g.in[0] && ih >= 0 && ih < g.in[1] && iw >= 0 && iw < g.in[2]) {
                const int64_t at = (((n * g.in[0] + id) * g.in[1] + ih) * g.in[2] + iw) * C + c;
                x = p.e.a_unsigned ? int64_t{static_cast<const uint8_t*>(p.x)[at]}
                                   : int64_t{static_cast<const int8_t*>(p.x)[at]};
              }
              acc += x * p.w[tap * C + c];
            }
          }
        }
        const int32_t acc32 = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(acc)));
        gemm_epilogue_one(e, ow, c, gemm_correct(acc32, p.e.a_zp, p.e.col_sums[c]), p.e.a_scale);
      }
    }
  }
}

}  // namespace cpu
}  // namespace torchquant
