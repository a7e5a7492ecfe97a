// The SIMD embedding-bag kernels' common part: the loop over a bag's rows for a block of columns
// (up to 64 columns of the bag's accumulator in registers while its rows stream by, the rows
// kAhead lookups ahead prefetched across bag boundaries: a random row of a large table is a
// cache miss, which is what these kernels wait on), the split of a bag's columns into blocks,
// and the loop over bags. The formulas are those of embedding_kernels.h.
//
// Included by embedding_avx2.cpp and embedding_avx512.cpp, each after defining
// TQ_EMBEDDING_TARGET (its target attribute) and a struct K of its vector operations:
//   vec, kLanes (floats per vec), kWide (vecs per block of the wide path: 64 columns);
//   zero(), set1(f), add(a, b), mul(a, b), max(a, b) (a > b ? a : b), fma(a, b, c),
//   opaque_one() (a 1.0 the compiler keeps: fma(x, one, y) stays an FMA),
//   q8(p) (kLanes bytes from p, as float),
//   values4<V>(row, d0, s, z, one, x) (columns [d0, d0 + kLanes V) of a 4-bit row: (q - z) * s,
//     in the order store<4, V> expects),
//   store<kBits, V>(acc, out), first_bad(idx, n, rows) (as first_bad_index).
// Everything here has internal linkage: each including file gets its own copy, compiled for its
// target.
#pragma once

#ifndef TQ_EMBEDDING_TARGET
#error "define TQ_EMBEDDING_TARGET before including cpu/embedding_driver.h"
#endif

#include <algorithm>

#include "cpu/embedding_kernels.h"

namespace torchquant {
namespace cpu {
namespace {

// Lookups prefetched ahead: 24 was best from a 1M-row table with the 8-bit loop at 3 vector
// operations per 16 columns (16 before it; 32 no better, 8 and 48 slower).
constexpr int64_t kAhead = 24;

// The row of an index of a later bag, not checked yet: an index outside the table gives row 0.
TQ_EMBEDDING_TARGET inline const char* ahead_row(const EmbeddingTable& t, int64_t j) {
  const uint64_t r = static_cast<uint64_t>(j) < static_cast<uint64_t>(t.rows) ? static_cast<uint64_t>(j) : 0;
  return reinterpret_cast<const char*>(t.data + r * t.row_stride);
}

// Prefetches of that row: its first bytes of this block's columns, and its last (the qparams).
TQ_EMBEDDING_TARGET inline void prefetch_row(const EmbeddingTable& t, int64_t j, int64_t first_byte) {
  const char* p = ahead_row(t, j);
  __builtin_prefetch(p + first_byte, 0, 3);
  __builtin_prefetch(p + t.row_stride - 1, 0, 3);
}

// ... or all of it (a bag of one row reads every column at once).
TQ_EMBEDDING_TARGET inline void prefetch_whole_row(const EmbeddingTable& t, int64_t j) {
  const char* p = ahead_row(t, j);
  for (int64_t o = 0; o < t.row_stride; o += 64) __builtin_prefetch(p + o, 0, 3);
  __builtin_prefetch(p + t.row_stride - 1, 0, 3);
}

// Columns [d0, d0 + kLanes V) of one bag of n entries, its sum (not yet divided for mean) or
// max; the indices up to ahead (>= n) may be prefetched. kMode, kWeighted and kPad are template
// parameters so that the loop over a bag's rows carries no test but the prefetch bound.
template <class K, int kBits, int V, BagMode kMode, bool kWeighted, bool kPad>
TQ_EMBEDDING_TARGET inline void bag_block(const EmbeddingTable& t, const int64_t* idx, int64_t n, int64_t ahead,
                                          const float* weights, int64_t padding_idx, int64_t d0, float* out) {
  using vec = typename K::vec;
  constexpr int L = K::kLanes;
  const vec one = K::opaque_one();
  vec acc[V];
  for (int v = 0; v < V; ++v) acc[v] = K::zero();
  float bias = 0.0f;  // B of an 8-bit sum
  const int64_t first_byte = d0 * kBits / 8;
  int64_t i = 0;
  if (kMode == BagMode::Max) {
    // The first counted row initializes the accumulator.
    for (; i < n; ++i) {
      if (kPad && idx[i] == padding_idx) continue;
      const uint8_t* row = t.data + idx[i] * t.row_stride;
      const float s = row_scale(t, row), z = row_zero_point(t, row);
      if (kBits == 8) {
        const vec sv = K::set1(s), bv = K::set1(row_bias(s, z));
        for (int v = 0; v < V; ++v) acc[v] = K::fma(K::q8(row + d0 + L * v), sv, bv);
      } else {
        K::template values4<V>(row, d0, s, z, one, acc);
      }
      ++i;
      break;
    }
  }
  for (; i < n; ++i) {
    if (i + kAhead < ahead) prefetch_row(t, idx[i + kAhead], first_byte);
    if (kPad && idx[i] == padding_idx) continue;
    const uint8_t* row = t.data + idx[i] * t.row_stride;
    float s = row_scale(t, row);
    const float z = row_zero_point(t, row);
    if (kBits == 8) {
      float b = row_bias(s, z);
      if (kMode == BagMode::Max) {
        const vec sv = K::set1(s), bv = K::set1(b);
        for (int v = 0; v < V; ++v) acc[v] = K::max(K::fma(K::q8(row + d0 + L * v), sv, bv), acc[v]);
      } else {
        if (kWeighted) {
          s = s * weights[i];
          b = b * weights[i];
        }
        bias = bias + b;
        const vec sv = K::set1(s);
        for (int v = 0; v < V; ++v) acc[v] = K::fma(K::q8(row + d0 + L * v), sv, acc[v]);
      }
    } else {
      vec x[V];
      K::template values4<V>(row, d0, s, z, one, x);
      if (kMode == BagMode::Max) {
        for (int v = 0; v < V; ++v) acc[v] = K::max(x[v], acc[v]);
      } else if (kWeighted) {
        const vec w = K::set1(weights[i]);
        for (int v = 0; v < V; ++v) acc[v] = K::fma(K::mul(x[v], w), one, acc[v]);
      } else {
        for (int v = 0; v < V; ++v) acc[v] = K::fma(x[v], one, acc[v]);
      }
    }
  }
  if (kBits == 8 && kMode != BagMode::Max) {
    const vec bv = K::set1(bias);
    for (int v = 0; v < V; ++v) acc[v] = K::add(acc[v], bv);
  }
  K::template store<kBits, V>(acc, out + d0);
}

template <class K, int kBits, int V>
TQ_EMBEDDING_TARGET inline void bag_block(const EmbeddingTable& t, const int64_t* idx, int64_t n, int64_t ahead,
                                          const float* weights, int64_t padding_idx, BagMode mode, int64_t d0,
                                          float* out) {
  const bool pad = padding_idx >= 0;
  if (mode == BagMode::Max) {
    if (pad) bag_block<K, kBits, V, BagMode::Max, false, true>(t, idx, n, ahead, weights, padding_idx, d0, out);
    else bag_block<K, kBits, V, BagMode::Max, false, false>(t, idx, n, ahead, weights, padding_idx, d0, out);
  } else if (weights != nullptr) {
    if (pad) bag_block<K, kBits, V, BagMode::Sum, true, true>(t, idx, n, ahead, weights, padding_idx, d0, out);
    else bag_block<K, kBits, V, BagMode::Sum, true, false>(t, idx, n, ahead, weights, padding_idx, d0, out);
  } else {
    if (pad) bag_block<K, kBits, V, BagMode::Sum, false, true>(t, idx, n, ahead, weights, padding_idx, d0, out);
    else bag_block<K, kBits, V, BagMode::Sum, false, false>(t, idx, n, ahead, weights, padding_idx, d0, out);
  }
}

// One bag: blocks of 64 columns, then of one vector, the last D % kLanes columns by the scalar
// formulas.
template <class K, int kBits>
TQ_EMBEDDING_TARGET void bag(const EmbeddingTable& t, const int64_t* idx, int64_t n, int64_t ahead,
                             const float* weights, int64_t padding_idx, BagMode mode, float* out) {
  constexpr int64_t L = K::kLanes, W = K::kWide;
  const int64_t D = t.dim;
  int64_t d = 0;
  for (; d + L * W <= D; d += L * W) bag_block<K, kBits, W>(t, idx, n, ahead, weights, padding_idx, mode, d, out);
  for (; d + L <= D; d += L) bag_block<K, kBits, 1>(t, idx, n, ahead, weights, padding_idx, mode, d, out);
  int64_t count;
  if (d < D) {
    count = bag_columns_scalar(t, idx, n, weights, padding_idx, mode, d, out);
  } else if (padding_idx >= 0) {
    count = 0;
    for (int64_t i = 0; i < n; ++i) count += idx[i] != padding_idx;
  } else {
    count = n;
  }
  if (mode == BagMode::Mean && count > 0) {
    const float c = static_cast<float>(count);
    for (int64_t k = 0; k < D; ++k) out[k] = out[k] / c;
  }
}

// Indices checked at a time: a run of small bags is checked in one pass of whole vectors (a
// check per bag costs a masked tail each, as much as a one-row bag's lookup), and the indices
// are still in the L1 cache when their rows are read.
constexpr int64_t kCheckChunk = 2048;

// An 8-bit bag of one row, unweighted, without padding_idx, D a multiple of kLanes: the
// operations of bag_block for n = 1 (sum and mean: fma(q, s, 0) + (0 + b), the mean's division
// by 1 exact; max: fma(q, s, b)) without its set-up. One-hot features (a bag per lookup) pay
// mostly that set-up otherwise.
template <class K>
TQ_EMBEDDING_TARGET inline void one_row_bag8(const EmbeddingTable& t, int64_t j, BagMode mode, float* out) {
  using vec = typename K::vec;
  constexpr int L = K::kLanes;
  const uint8_t* row = t.data + j * t.row_stride;
  const float s = row_scale(t, row), z = row_zero_point(t, row);
  const float b = row_bias(s, z);
  const vec sv = K::set1(s);
  if (mode == BagMode::Max) {
    const vec bv = K::set1(b);
    for (int64_t d = 0; d < t.dim; d += L) {
      const vec v = K::fma(K::q8(row + d), sv, bv);
      K::template store<8, 1>(&v, out + d);
    }
  } else {
    const vec bv = K::set1(0.0f + b), zero = K::zero();
    for (int64_t d = 0; d < t.dim; d += L) {
      const vec v = K::add(K::fma(K::q8(row + d), sv, zero), bv);
      K::template store<8, 1>(&v, out + d);
    }
  }
}

template <class K, int kBits>
TQ_EMBEDDING_TARGET int64_t bags(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0, int64_t b1) {
  if (b0 >= b1) return -1;
  const int64_t end = bag_end(a, b1 - 1);  // prefetching stops at the last index of these bags
  int64_t checked = bag_begin(a, b0);      // the indices before it are in range
  const bool one_row_ok = kBits == 8 && a.weights == nullptr && a.padding_idx < 0 && t.dim % K::kLanes == 0;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t s = bag_begin(a, b), n = bag_end(a, b) - s;
    if (s + n > checked) {
      const int64_t upto = std::min(end, std::max(s + n, checked + kCheckChunk));
      const int64_t bad = K::first_bad(a.idx + checked, upto - checked, t.rows);
      if (bad >= 0) return checked + bad;
      checked = upto;
    }
    if (n == 1 && one_row_ok) {
      if (s + kAhead < end) prefetch_whole_row(t, a.idx[s + kAhead]);
      one_row_bag8<K>(t, a.idx[s], a.mode, a.out + b * t.dim);
      continue;
    }
    bag<K, kBits>(t, a.idx + s, n, end - s, a.weights ? a.weights + s : nullptr, a.padding_idx, a.mode,
                  a.out + b * t.dim);
  }
  return -1;
}

// The kernel of this file's ISA.
template <class K>
TQ_EMBEDDING_TARGET int64_t embedding_bags(const EmbeddingTable& t, const EmbeddingBags& a, int64_t b0,
                                           int64_t b1) {
  return t.bits == 8 ? bags<K, 8>(t, a, b0, b1) : bags<K, 4>(t, a, b0, b1);
}

}  // namespace
}  // namespace cpu
}  // namespace torchquant
