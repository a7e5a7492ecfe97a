// Raw-pointer kernels of the CPU int8 GEMM, one signature set per ISA (scalar, avx2,
// avx512vnni), declared together so that dispatch and tests can swap them freely.
//
// Packed weight layout (one layout for every ISA, so a weight packed once keeps working when
// the kernel variant changes): the weight w[N, K] is cut into panels of kPanel = 16 output
// channels; panel p holds channels [16p, 16p + 16) (past N: zeros) in K * 16 bytes:
//   - full groups of 4 k: group g is 64 bytes, channel c's w[n, 4g .. 4g + 3] at 4c .. 4c + 3
//     (the operand order of vpdpbusd: one int32 lane per channel, 4 products per lane);
//   - then, when K % 4 = r != 0, a tail of 16 * r bytes: channel c's r values at c * r.
// The packed tensor is int8 of shape [ceil(N / 16), K, 16]: K is stored exactly, so a weight
// packed for another K is rejected.
//
// Activations are read in place (row-major, unit stride along K); each variant brings them into
// the form its inner loop wants (uint8 for VNNI, int16 for AVX2), computes exact int32
// accumulators and hands them to the requantize epilogue below, whose one-element version is
// the oracle of the contract in docs/quantization.md ("Requantization").
#pragma once

#include <cstdint>
#include <vector>

#include "common/quant_math.h"
#include "cpu/scratch.h"

namespace torchquant {
namespace cpu {

constexpr int64_t kPanel = 16;

inline int64_t gemm_panels(int64_t N) { return (N + kPanel - 1) / kPanel; }

enum class GemmOut : int { Int32 = 0, Float = 1, QInt8 = 2, QUInt8 = 3 };

struct GemmProblem {
  int64_t M = 0, N = 0, K = 0;
  bool a_unsigned = false;          // activations uint8 (true) or int8
  const int8_t* w = nullptr;        // packed weight
  const int32_t* col_sums = nullptr;
  // Activation qparams: per tensor, or per row when the *_row pointers are set.
  float a_scale = 1.0f;
  int32_t a_zp = 0;
  const float* a_scale_row = nullptr;
  const int32_t* a_zp_row = nullptr;
  const float* w_scale = nullptr;   // [N]
  const float* bias = nullptr;      // [N] or null
  bool relu = false;
  GemmOut out_kind = GemmOut::Float;
  float out_inv_scale = 1.0f;       // 1.0f / out_scale
  int32_t out_zp = 0;
  // No NaN can reach the requantize: out_inv_scale, every bias and every product a_scale *
  // w_scale are finite (set_nan_free; the scales themselves are finite and > 0, as checked), so
  // y is finite or +-inf and y * out_inv_scale never NaN. A kernel may then skip the NaN -> zero
  // point step; the results are the same either way.
  bool nan_free = false;
  void* out = nullptr;              // [M, ldo] of int32 / float / int8 / uint8
  int64_t ldo = 0;
};

// corr = acc - zp * col_sum in int32. Unsigned arithmetic: a wrap of an intermediate is
// well-defined, and the final value is exact because |corr| <= K * 255 * 128 < 2^31 (K <= kMaxK).
inline int32_t gemm_correct(int32_t acc, int32_t zp, int32_t col_sum) {
  return static_cast<int32_t>(static_cast<uint32_t>(acc) -
                              static_cast<uint32_t>(zp) * static_cast<uint32_t>(col_sum));
}

// The float part of the epilogue: (float)corr * (a_scale * w_scale), + bias, ReLU.
// ReLU is `y < 0 ? 0 : y` (std::max(y, 0)): NaN and -0 pass through unchanged.
inline float gemm_dequant(int32_t corr, float a_scale, float w_scale, const float* bias, int64_t n,
                          bool relu) {
  const float s = a_scale * w_scale;
  float y = static_cast<float>(corr) * s;
  if (bias != nullptr) y = y + bias[n];
  if (relu) y = y < 0.0f ? 0.0f : y;
  return y;
}

// Writes output element (m, n) from its zero-point-corrected accumulator: the scalar oracle
// that every vector epilogue reproduces bit for bit.
inline void gemm_epilogue_one(const GemmProblem& p, int64_t m, int64_t n, int32_t corr,
                              float a_scale) {
  const int64_t o = m * p.ldo + n;
  if (p.out_kind == GemmOut::Int32) {
    static_cast<int32_t*>(p.out)[o] = corr;
    return;
  }
  const float y = gemm_dequant(corr, a_scale, p.w_scale[n], p.bias, n, p.relu);
  if (p.out_kind == GemmOut::Float) {
    static_cast<float*>(p.out)[o] = y;
  } else if (p.out_kind == GemmOut::QInt8) {
    const float q = quantize_val(y, p.out_inv_scale, static_cast<float>(p.out_zp), -128.0f, 127.0f);
    static_cast<int8_t*>(p.out)[o] = static_cast<int8_t>(static_cast<int32_t>(q));
  } else {
    const float q = quantize_val(y, p.out_inv_scale, static_cast<float>(p.out_zp), 0.0f, 255.0f);
    static_cast<uint8_t*>(p.out)[o] = static_cast<uint8_t>(static_cast<int32_t>(q));
  }
}

// Packs w (element (n, k) at w[n * stride_n + k * stride_k]) into the layout above and
// writes col_sums[n] = sum_k w[n, k]. Same for every ISA.
void gemm_pack_weight(const int8_t* w, int64_t stride_n, int64_t stride_k, int64_t N, int64_t K,
                      int8_t* packed, int32_t* col_sums);
// The same for channels [n0, n1) only: panels holding them are written whole (zeros past N)
// when n0 is a multiple of 16.
void gemm_pack_weight_cols(const int8_t* w, int64_t stride_n, int64_t stride_k, int64_t N,
                           int64_t K, int64_t n0, int64_t n1, int8_t* packed, int32_t* col_sums);
// The same layout from a [K, N] matrix with unit stride along N (int8_mm's b), for channels
// of panels [p0, p1); a 4 x 16 byte transpose per group instead of byte-wise gathers.
void gemm_pack_weight_kn__avx2(const int8_t* b, int64_t ldb, int64_t N, int64_t K, int64_t p0,
                               int64_t p1, int8_t* packed, int32_t* col_sums);

// The same layout from w [N, K] with unit stride along K (row n at w + n * ldw: nn.Linear's
// weight, or int8_mm's b = w.t()), for channels of panels [p0, p1); transposes of 4-byte groups
// in registers instead of byte-wise scatters. Bit-identical to gemm_pack_weight.
void gemm_pack_weight_nk__avx2(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int64_t p0,
                               int64_t p1, int8_t* packed, int32_t* col_sums);
void gemm_pack_weight_nk__avx512vnni(const int8_t* w, int64_t ldw, int64_t N, int64_t K,
                                     int64_t p0, int64_t p1, int8_t* packed, int32_t* col_sums);

// int8_mm straight from b (AVX-512 VNNI only, gemm_mm_avx512.cpp): out[m, n] for rows [0, M) of a
// (row m at a + m * lda, unit stride along K) and columns [n0, n1) of b ([K, N], row k at
// b + k * ldb, unit stride along N); out row m at out + m * ldo, indexed by n. b is interleaved
// chunk by chunk into thread-local scratch, never packed whole. Any M and N.
void gemm_mm_direct__avx512vnni(const int8_t* a, int64_t lda, int64_t M, const int8_t* b,
                                int64_t ldb, int64_t K, int64_t n0, int64_t n1, int32_t* out,
                                int64_t ldo);

// int8_mm with b = w.t() straight from w (AVX-512 VNNI only, gemm_mm_avx512.cpp): out[m, n] for
// rows [0, M) of a (as above) and channels [n0, n1) of w [N, K] (row n at w + n * ldw, unit
// stride along K), as dot products of rows. For few rows of a, where packing w would cost
// more than the product.
void gemm_mm_nk__avx512vnni(const int8_t* a, int64_t lda, int64_t M, const int8_t* w, int64_t ldw,
                            int64_t K, int64_t n0, int64_t n1, int32_t* out, int64_t ldo);

// gemm_mm_direct__avx512vnni's buffered path with b = w.t() given as w [N, K] (row n at
// w + n * ldw, unit stride along K); any M and N.
void gemm_mm_direct_nk__avx512vnni(const int8_t* a, int64_t lda, int64_t M, const int8_t* w,
                                   int64_t ldw, int64_t K, int64_t n0, int64_t n1, int32_t* out,
                                   int64_t ldo);

// What an implicit GEMM's register tiles may skip, per row from m0 on (see below).
struct SegSkip {
  // Per row [lo, hi) without perm, [lo, hi, glo, ghi) with it: the only runs [lo, hi) and 4-byte
  // groups [glo, ghi) of each run that may hold nonzero bytes (lo >= hi or glo >= ghi: none;
  // without perm, every run's groups). The others are zero padding, which adds nothing: only
  // for unsigned activations of zero point 0.
  const int32_t* range = nullptr;
  // Or null: row m0 + i computes output row perm[i] (rows gathered by padding class, which is
  // what makes skipping columns pay). Only with range (ignored without).
  const int32_t* perm = nullptr;
};

// Implicit GEMM of a convolution (AVX-512 VNNI only; never selected elsewhere): output rows
// [m0, m1) with per-tensor activation qparams, row m's K activations in segs runs of K / segs
// bytes (a multiple of 4), run j at rows[m - m0] + j * sstride (the kernel rows of a receptive
// field, read in place). skip, or null: a register tile skips the runs and groups none of its
// rows needs (the weights' alike), and writes row m0 + i's output to row perm[i] where there is
// a perm (rows gathered by padding class), else to row m0 + i. Otherwise as gemm_compute.
void gemm_compute_segs__avx512vnni(const GemmProblem& p, const uint8_t* const* rows, int64_t segs,
                                   int64_t sstride, int64_t m0, int64_t m1, int64_t p0, int64_t p1,
                                   const SegSkip* skip = nullptr);

#define TQ_DECLARE_GEMM_KERNELS(SUFFIX)                                                         \
  /* Rows per register tile; the adapter aligns row blocks to it. */                            \
  int gemm_mr__##SUFFIX();                                                                      \
  /* Panels per task: the weight slice one task streams through its cache. */                   \
  int64_t gemm_task_panels__##SUFFIX();                                                         \
  /* Output rows [m0, m1) and columns of panels [p0, p1). Activations: K int8/uint8 values per  \
     row, row m at a + m * lda (unit stride along K). */                                        \
  void gemm_compute__##SUFFIX(const GemmProblem& p, const void* a, int64_t lda, int64_t m0,     \
                              int64_t m1, int64_t p0, int64_t p1);                              \
  /* Per-row affine quantization (torch.ao's choose_qparams per row) of `rows` rows of K        \
     floats (row r at x + r * ldx) into q (row r at q + r * ldq), with scale[r] and zp[r]. */   \
  void quantize_rows__##SUFFIX(const float* x, int64_t ldx, int64_t rows, int64_t K,            \
                               int32_t qmin, int32_t qmax, int8_t* q, int64_t ldq, float* scale, \
                               int32_t* zp);

TQ_DECLARE_GEMM_KERNELS(scalar)
TQ_DECLARE_GEMM_KERNELS(avx2)
TQ_DECLARE_GEMM_KERNELS(avx512vnni)

#undef TQ_DECLARE_GEMM_KERNELS

// AMX-INT8 (gemm_amx.cpp): the packed layout's 4-k groups of 16 channels are the weight tiles of
// tdpbusd / tdpbssd as they lie; a block of 32 rows x 2 panels accumulates in four int32 tiles and
// goes through the AVX-512 epilogue. Small problems (few rows, short K, K % 4 != 0) run the AVX-512
// VNNI kernel instead. Bit-identical to it (int32 sums are exact either way).
int gemm_mr__amx();
int64_t gemm_task_panels__amx();
void gemm_compute__amx(const GemmProblem& p, const void* a, int64_t lda, int64_t m0, int64_t m1,
                       int64_t p0, int64_t p1);
// Implicit GEMM on AMX tiles (stride-1 convolutions, conv.cpp): rows [0, rows), row m at
// a + m * lda, its K bytes in K / run runs of `run` bytes (a multiple of 64), run j at
// + j * sstride; row m's output goes to output row out_row[m] (none when negative). Per-tensor
// or per-row activation qparams as gemm_compute; no fallback: rows >= 1, K % 64 == 0. Every
// byte a row reads must lie inside the caller's buffer.
void gemm_compute_runs__amx(const GemmProblem& p, const uint8_t* a, int64_t lda, int64_t rows,
                            int64_t run, int64_t sstride, const int32_t* out_row, int64_t p0,
                            int64_t p1);

// AVX-VNNI (gemm_avx2.cpp): the AVX2 variant's layout, tiles and epilogue, with vpdpbusd on
// 256-bit registers for every tile; the other kernels of that variant are AVX2's.
void gemm_compute__avxvnni(const GemmProblem& p, const void* a, int64_t lda, int64_t m0, int64_t m1,
                           int64_t p0, int64_t p1);

// The per-row qparams of the dynamic path (scalar oracle, shared by every variant):
// scale = max((mx - mn) / (qmax - qmin), FLT_EPSILON), zp = clamp(qmin - nearbyint(mn / scale)),
// with mn = min(min(x), 0), mx = max(max(x), 0) found by the caller (NaN elements ignored).
// mn / scale is NaN only for a row holding -inf (scale = inf); the clamp sends it to qmin.
inline void rowwise_qparams(float mn, float mx, int32_t qmin, int32_t qmax, float* scale,
                            int32_t* zp) {
  constexpr float kEps = 1.1920928955078125e-07f;  // FLT_EPSILON, torch.ao's default eps
  float s = (mx - mn) / static_cast<float>(qmax - qmin);
  s = s > kEps ? s : kEps;
  float z = static_cast<float>(qmin) - nearbyintf(mn / s);
  z = z > static_cast<float>(qmin) ? z : static_cast<float>(qmin);  // NaN -> qmin
  z = z < static_cast<float>(qmax) ? z : static_cast<float>(qmax);
  *scale = s;
  *zp = static_cast<int32_t>(z);
}

}  // namespace cpu
}  // namespace torchquant
