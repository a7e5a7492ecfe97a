// Scalar fused recurrent-cell updates: the one-element formulas of rnn_kernels.h.
#include <cmath>

#include "cpu/rnn_kernels.h"

namespace torchquant {
namespace cpu {
namespace {

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

void lstm_cell_row__scalar(const float* ig, const float* hg, const float* c, float* h_out,
                           float* c_out, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float i = sigmoid(ig[j] + hg[j]);
    const float f = sigmoid(ig[H + j] + hg[H + j]);
    const float g = std::tanh(ig[2 * H + j] + hg[2 * H + j]);
    const float o = sigmoid(ig[3 * H + j] + hg[3 * H + j]);
    const float cy = f * c[j] + i * g;
    c_out[j] = cy;
    h_out[j] = o * std::tanh(cy);
  }
}

void gru_cell_row__scalar(const float* ig, const float* hg, const float* h, float* h_out,
                          int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float r = sigmoid(ig[j] + hg[j]);
    const float z = sigmoid(ig[H + j] + hg[H + j]);
    const float n = std::tanh(ig[2 * H + j] + r * hg[2 * H + j]);
    h_out[j] = (h[j] - n) * z + n;
  }
}

}  // namespace cpu
}  // namespace torchquant
