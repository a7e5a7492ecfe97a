// Raw-pointer kernels of the row-wise quantized embedding-bag lookup, one signature per ISA
// (scalar, avx2, avx512), declared together so that dispatch and tests can swap them freely.
//
// Packed table (one layout for every ISA and device): row r of the [N, row_stride] uint8 table
// holds the row's quantized values, then, at byte offset qparams_offset (4-byte aligned), its
// float32 scale s and float32 zero point z (torch.ao's per_channel_affine_float_qparams):
//   bits = 8: value d is byte d;
//   bits = 4: value d is the low nibble of byte d / 2 for even d, the high nibble for odd d
//             (torch.quint4x2's order).
// Entries equal to padding_idx (>= 0) are skipped and not counted; mean divides a bag's sum by
// the number of entries counted; an empty bag gives 0. Every float32 operation below is rounded
// once (round to nearest even), fma(a, b, c) being a * b + c rounded once; in index order:
//
// 8-bit rows (q * s plus a per-row bias, as torch.ao's fbgemm kernel computes, not (q - z) * s):
//   per row, b = -(z * s) (one rounding: the product);
//   sum, mean: with per-sample weight w, s' = s * w and b' = b * w (one rounding each), else
//     s' = s, b' = b; acc_d = fma(q_d, s', acc_d) from acc_d = 0, and one scalar B = B + b'
//     from B = 0; the bag's sum is acc_d + B;
//   max: v_d = fma(q_d, s, b), acc_d = max(acc_d, v_d) from the first entry counted.
//   A row's value (max, and the plain Embedding lookup, a max over one entry) is fma(q, s, b):
//   within half an ulp of |z * s| plus half an ulp of the result from the exactly dequantized
//   (q - z) * s. A sum is q * s summed apart from the biases, so the inner loop is one
//   conversion and one FMA per value.
// 4-bit rows (the exactly dequantized weight, looked up from the row's 16 possible values):
//   v_d = (q_d - z) * s (two roundings);
//   sum, mean: acc_d = acc_d + v_d, or acc_d + v_d * w with a per-sample weight, from 0;
//   max: acc_d = max(acc_d, v_d) from the first entry counted.
// max(a, v) is v > a ? v : a. A SIMD kernel may issue a - b / a + b as fma(a, 1, -b) /
// fma(a, 1, b), which round the same exact value once, but fuses no product into a sum but the
// fma()s above. So every variant and the plain-torch reference (torchquant.reference.
// embedding_bag_rowwise, whose fma is exact) agree bit for bit.
//
// The kernels check each bag's indices (every one in [0, rows)) before they read its rows, and
// stop at the first bag holding one outside: no row outside the table is ever read. The offsets
// are checked by the caller (offsets[0] == 0, non-decreasing, the last <= n).
#pragma once

#include <cmath>
#include <cstdint>

namespace torchquant {
namespace cpu {

enum class BagMode : int { Sum = 0, Mean = 1, Max = 2 };

struct EmbeddingTable {
  const uint8_t* data = nullptr;
  int64_t rows = 0;            // N: valid indices are [0, rows)
  int64_t row_stride = 0;      // bytes per packed row
  int64_t qparams_offset = 0;  // byte offset of (scale, zero_point) in a row
  int64_t dim = 0;             // embedding_dim
  int bits = 8;                // 8 or 4
};

// The bags of one call: bag b holds idx[offsets[b], offsets[b + 1]) (the last one up to n), or,
// without offsets, idx[b * fixed, (b + 1) * fixed).
struct EmbeddingBags {
  const int64_t* idx = nullptr;      // contiguous int64
  int64_t n = 0;                     // number of indices
  const int64_t* offsets = nullptr;  // nullptr: bags of `fixed` entries
  int64_t n_offsets = 0;
  int64_t fixed = 0;
  const float* weights = nullptr;    // per-sample weights (one per index), or nullptr
  int64_t padding_idx = -1;          // < 0: none
  BagMode mode = BagMode::Sum;
  float* out = nullptr;              // [bags, dim], row b written by bag b
};

inline int64_t bag_begin(const EmbeddingBags& a, int64_t b) {
  return a.offsets ? a.offsets[b] : b * a.fixed;
}
inline int64_t bag_end(const EmbeddingBags& a, int64_t b) {
  if (a.offsets) return b + 1 < a.n_offsets ? a.offsets[b + 1] : a.n;
  return (b + 1) * a.fixed;
}

// Bags [b0, b1) into a.out. Returns -1, or the position (into a.idx) of an index outside
// [0, t.rows): then some bags, the one holding it among them, are left unwritten (the caller
// raises; no row of an index outside the table is ever read).
#define TQ_DECLARE_EMBEDDING_KERNELS(SUFFIX) \
  int64_t embedding_bags__##SUFFIX(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0, int64_t b1);

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

// Position of the first of idx[0, n) outside [0, rows), or -1 (as an unsigned value a negative
// index is out of range too). The branch-free pass vectorizes; the position is looked for only
// on the error path.
inline int64_t first_bad_index(const int64_t* idx, int64_t n, int64_t rows) {
  uint64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint64_t>(idx[i]) >= static_cast<uint64_t>(rows);
  if (!bad) return -1;
  for (int64_t i = 0; i < n; ++i) {
    if (static_cast<uint64_t>(idx[i]) >= static_cast<uint64_t>(rows)) return i;
  }
  return -1;
}

// The per-row bias of an 8-bit row: b = -(z * s).
inline float row_bias(float scale, float zero_point) { return -(zero_point * scale); }

// The scalar formulas for columns [d0, D) of one bag (the scalar kernel, and the SIMD kernels'
// last columns): the bag's sum (not yet divided for mean) or max into out[d0, D). Returns the
// number of entries counted.
inline int64_t bag_columns_scalar(const EmbeddingTable& t, const int64_t* idx, int64_t n, const float* weights,
                                  int64_t padding_idx, BagMode mode, int64_t d0, float* out) {
  const int64_t D = t.dim;
  for (int64_t d = d0; d < D; ++d) out[d] = 0.0f;
  const bool biased = t.bits == 8 && mode != BagMode::Max;
  float bias = 0.0f;  // B of an 8-bit sum
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] == padding_idx) continue;
    const uint8_t* row = t.data + idx[i] * t.row_stride;
    float s = row_scale(t, row);
    const float z = row_zero_point(t, row);
    if (t.bits == 8) {
      float b = row_bias(s, z);
      if (mode == BagMode::Max) {
        for (int64_t d = d0; d < D; ++d) {
          const float v = std::fma(static_cast<float>(row[d]), s, b);
          out[d] = (count == 0 || v > out[d]) ? v : out[d];
        }
      } else {
        if (weights != nullptr) {
          s = s * weights[i];
          b = b * weights[i];
        }
        bias = bias + b;
        for (int64_t d = d0; d < D; ++d) out[d] = std::fma(static_cast<float>(row[d]), s, out[d]);
      }
    } else {
      for (int64_t d = d0; d < D; ++d) {
        float v = (static_cast<float>(row_value(t, row, d)) - z) * s;
        if (mode == BagMode::Max) {
          out[d] = (count == 0 || v > out[d]) ? v : out[d];
        } else {
          if (weights != nullptr) v = v * weights[i];
          out[d] = out[d] + v;
        }
      }
    }
    ++count;
  }
  if (biased) {
    for (int64_t d = d0; d < D; ++d) out[d] = out[d] + bias;
  }
  return count;
}

}  // namespace cpu
}  // namespace torchquant
