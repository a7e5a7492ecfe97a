// Scalar row-wise quantized embedding bag: the one-element formulas of embedding_kernels.h.
#include <vector>

#include "cpu/embedding_kernels.h"

namespace torchquant {
namespace cpu {

void embedding_bag__scalar(const EmbeddingTable& t, const int64_t* idx, int64_t n,
                           const float* weights, int64_t padding_idx, BagMode mode, float* out) {
  const int64_t D = t.dim;
  for (int64_t d = 0; d < D; ++d) out[d] = 0.0f;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] == padding_idx) continue;
    const uint8_t* row = t.data + idx[i] * t.row_stride;
    const float s = row_scale(t, row), z = row_zero_point(t, row);
    for (int64_t d = 0; d < D; ++d) {
      float v = (static_cast<float>(row_value(t, row, d)) - z) * s;
      if (mode == BagMode::Max) {
        out[d] = (count == 0 || v > out[d]) ? v : out[d];
      } else {
        if (weights != nullptr) v = v * weights[i];
        out[d] = out[d] + v;
      }
    }
    ++count;
  }
  if (mode == BagMode::Mean && count > 0) {
    const float c = static_cast<float>(count);
    for (int64_t d = 0; d < D; ++d) out[d] = out[d] / c;
  }
}

}  // namespace cpu
}  // namespace torchquant
