// Raw-pointer kernels of the row-wise quantized embedding-bag lookup, one signature per ISA
// (scalar, avx2, avx512), declared together so that dispatch and tests can swap them freely.
//
// Packed table (one layout for every ISA and device): row r of the [N, row_stride] uint8 table
// holds the row's quantized values, then, at byte offset qparams_offset (4-byte aligned), its
// float32 scale and float32 zero point (torch.ao's per_channel_affine_float_qparams):
//   bits = 8: value d is byte d;
//   bits = 4: value d is the low nibble of byte d / 2 for even d, the high nibble for odd d
//             (torch.quint4x2's order).
// A row's float value is (q - zero_point) * scale, in float32: the dequantized weight, as
// torch.ao dequantizes it. A bag's result, element by element and in index order:
//   sum:  acc = acc + v (or acc + v * w with per-sample weights), from 0;
//   mean: the sum divided by the number of entries counted;
//   max:  acc = max(acc, v), from the first entry; 0 for an empty bag.
// Entries equal to padding_idx (>= 0) are skipped and not counted. Indices are checked by the
// caller (every index in [0, N)); the kernels read only the rows they are given.
#pragma once

#include <cstdint>

namespace torchquant {
namespace cpu {

enum class BagMode : int { Sum = 0, Mean = 1, Max = 2 };

struct EmbeddingTable {
  const uint8_t* data = nullptr;
  int64_t row_stride = 0;      // bytes per packed row
  int64_t qparams_offset = 0;  // byte offset of (scale, zero_point) in a row
  int64_t dim = 0;             // embedding_dim
  int bits = 8;                // 8 or 4
};

#define TQ_DECLARE_EMBEDDING_KERNELS(SUFFIX)                                                      \
  void embedding_bag__##SUFFIX(const EmbeddingTable& t, const int64_t* idx, int64_t n,          \
                               const float* weights, int64_t padding_idx, BagMode mode, float* out);

TQ_DECLARE_EMBEDDING_KERNELS(scalar)
TQ_DECLARE_EMBEDDING_KERNELS(avx2)
TQ_DECLARE_EMBEDDING_KERNELS(avx512)

#undef TQ_DECLARE_EMBEDDING_KERNELS

inline float row_scale(const EmbeddingTable& t, const uint8_t* row) {
  float s;
  __builtin_memcpy(&s, row + t.qparams_offset, sizeof(float));
  return s;
}
inline float row_zero_point(const EmbeddingTable& t, const uint8_t* row) {
  float z;
  __builtin_memcpy(&z, row + t.qparams_offset + sizeof(float), sizeof(float));
  return z;
}
inline int row_value(const EmbeddingTable& t, const uint8_t* row, int64_t d) {
  if (t.bits == 8) return row[d];
  const uint8_t b = row[d >> 1];
  return (d & 1) ? (b >> 4) : (b & 0x0F);
}

}  // namespace cpu
}  // namespace torchquant
