// Scalar row-wise quantized embedding bag: the one-element formulas of embedding_kernels.h.
#include "cpu/embedding_kernels.h"

namespace torchquant {
namespace cpu {

int64_t embedding_bags__scalar(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0, int64_t b1) {
  const int64_t D = t.dim;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t s = bag_begin(a, b), n = bag_end(a, b) - s;
    const int64_t* idx = a.idx + s;
    const int64_t bad = first_bad_index(idx, n, t.rows);
    if (bad >= 0) return s + bad;
    float* out = a.out + b * D;
    const int64_t count = bag_columns_scalar(t, idx, n, a.weights ? a.weights + s : nullptr, a.padding_idx,
                                             a.mode, 0, out);
    if (a.mode == BagMode::Mean && count > 0) {
      const float c = static_cast<float>(count);
      for (int64_t d = 0; d < D; ++d) out[d] = out[d] / c;
    }
  }
  return -1;
}

}  // namespace cpu
}  // namespace torchquant
