// CPU adapters of the int8 convolution ops: argument checks, layout, the task grid over threads
// and the choice of kernel variant.
//
// General convolutions run on the packed GEMM micro-kernels (gemm_compute__<isa>): per group,
// the output pixels are cut into equal tiles (conv_grid); a task copies the receptive
// fields of its tile into thread-local scratch (im2col of that tile only: [rows, taps * Cg]
// bytes, tens of KiB) and multiplies it with the group's packed weight. A 1x1 convolution with
// stride 1 and no padding reads the channels-last activations in place; on AVX-512 VNNI most
// others do too (implicit GEMM: kernel rows read through per-pixel pointers, from the input or
// from a padded copy of the tile's input rows). Depthwise convolutions
// have direct kernels of their own (conv_dw_*.cpp). Every path ends in the requantize epilogue
// of linear_int8 (docs/quantization.md, "Convolution").
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/conv_checks.h"
#include "cpu/conv_kernels.h"
#include "cpu/gemm_args.h"
#include "cpu/isa.h"
#include "cpu/packed_record.h"
#include "ops.h"

namespace torchquant {
namespace {

using cpu::GemmOut;
using cpu::GemmProblem;
using cpu::check_cpu;
using cpu::per_channel_float;
using cpu::read_scale;
using cpu::read_zero_point;

struct ConvKernels {
  decltype(&cpu::gemm_mr__scalar) mr;
  decltype(&cpu::gemm_compute__scalar) compute;
  decltype(&cpu::conv_dw__scalar) dw;
  decltype(&cpu::gemm_compute_segs__avx512vnni) segs;  // implicit GEMM, or null
  bool amx;  // compute multiplies on AMX tiles where the problem is large enough
};

const ConvKernels& conv_kernels() {
  static const ConvKernels scalar{cpu::gemm_mr__scalar, cpu::gemm_compute__scalar,
                                  cpu::conv_dw__scalar, nullptr, false};
  static const ConvKernels avx2{cpu::gemm_mr__avx2, cpu::gemm_compute__avx2, cpu::conv_dw__avx2,
                                nullptr, false};
  // Depthwise: vpdpbusd on 256-bit registers over columns of kernel rows (conv_dw_avx512.cpp).
  static const ConvKernels avxvnni{cpu::gemm_mr__avx2, cpu::gemm_compute__avxvnni, cpu::conv_dw__avxvnni,
                                   nullptr, false};
  static const ConvKernels vnni{cpu::gemm_mr__avx512vnni, cpu::gemm_compute__avx512vnni,
                                cpu::conv_dw__avx512vnni, cpu::gemm_compute_segs__avx512vnni, false};
  static const ConvKernels amx{cpu::gemm_mr__amx, cpu::gemm_compute__amx, cpu::conv_dw__avx512vnni,
                               cpu::gemm_compute_segs__avx512vnni, true};
  switch (cpu_isa()) {
    case CpuIsa::Amx: return amx;
    case CpuIsa::Avx512Vnni: return vnni;
    case CpuIsa::AvxVnni: return avxvnni;
    case CpuIsa::Avx2: return avx2;
    default: return scalar;
  }
}

// Below this many multiply-adds a thread wake-up costs more than it saves.
constexpr int64_t kSerialWork = int64_t{1} << 20;
// Bytes of one im2col tile: well inside L2 next to the weight panels it meets.
constexpr int64_t kTileBytes = int64_t{96} << 10;





// Bytes of one kernel row (KW taps x Cg channels) in the packed weight and in the im2col rows.
// A short row whose size is not a multiple of 4 (the 3-channel stems: 7 x 3 = 21 and 3 x 3 = 9
// bytes) is padded with zero weights to the next one: the GEMM then runs whole 4-byte groups
// only (no K % 4 tail, whose extra pass over the accumulators cost as much as several groups),
// and im2col copies each row as one fixed-size block. A padded byte meets a zero weight, so
// whatever it holds adds nothing. Only when there are several rows: a lone row's padding is the
// tail itself. Depends on the weight's shape alone (pack_conv_weight sees nothing else);
// conv_packed_weight_shape in python/torchquant/_ops.py mirrors it.
int64_t row_bytes(const ConvSetup& s) {
  const int64_t r = s.g.k[2] * s.Cg;
  const bool pad = r % 4 != 0 && r < 64 && s.g.k[0] * s.g.k[1] > 1;
  return pad ? (r + 3) / 4 * 4 : r;
}

// GEMM depth per group as packed: kernel rows x row_bytes.
int64_t packed_depth(const ConvSetup& s) { return s.g.k[0] * s.g.k[1] * row_bytes(s); }

// The packed weight (1-D: the panels of every group, then the record of packed_record.h).
cpu::PackedRecord conv_record(const ConvSetup& s) {
  return cpu::packed_record(cpu::kConvRecordTag, s.Cg, s.g.k, s.groups, s.Cout);
}

// Copies the receptive fields of output pixels [m0, m1) of group g into a (row i at
// a + i * Kp, taps in (kd, kh, kw) order, Cg channels each, each kernel row of taps rb bytes
// long); padded taps hold the zero point. x_end: one past the input's last byte.
void im2col_tile(const ConvSetup& s, const uint8_t* x, const uint8_t* x_end, int64_t g, int64_t m0,
                 int64_t m1, uint8_t zp, uint8_t* a) {
  const ConvGeometry& G = s.g;
  const int64_t Cg = s.Cg, C = G.C, rb = row_bytes(s), Kp = packed_depth(s);
  const int64_t KW = G.k[2], rlen = KW * Cg;
  const bool run = Cg == C && G.dil[2] == 1;
  // A padded row of at most 32 bytes inside the input is one 32-byte copy: its bytes past rb
  // land in the next kernel row (written after it) or in the scratch's slack, and the bytes
  // read past the row are other input bytes (never past x_end), which meet zero weights.
  const bool block = run && rb != rlen && rb <= 32;
  int64_t ow = m0 % G.out[2], oh = (m0 / G.out[2]) % G.out[1];
  int64_t od = (m0 / (G.out[2] * G.out[1])) % G.out[0], n = m0 / (G.out[2] * G.out[1] * G.out[0]);
  for (int64_t m = m0; m < m1; ++m) {
    uint8_t* row = a + (m - m0) * Kp;
    for (int64_t kd = 0; kd < G.k[0]; ++kd) {
      const int64_t id = od * G.stride[0] - G.pad[0] + kd * G.dil[0];
      const bool din = id >= 0 && id < G.in[0];
      for (int64_t kh = 0; kh < G.k[1]; ++kh, row += rb) {
        const int64_t ih = oh * G.stride[1] - G.pad[1] + kh * G.dil[1];
        const bool hin = din && ih >= 0 && ih < G.in[1];
        const uint8_t* xrow = hin ? x + ((n * G.in[0] + id) * G.in[1] + ih) * G.in[2] * C + g * Cg : x;
        if (run) {
          // One group, no dilation along W: the row's taps are one contiguous run of the input
          // row, copied at once, with zero-point fill where it hangs over the border.
          const int64_t iw0 = ow * G.stride[2] - G.pad[2];
          const int64_t lo = hin ? std::min(KW, std::max<int64_t>(0, -iw0)) : KW;
          const int64_t hi = hin ? std::max(lo, std::min(KW, G.in[2] - iw0)) : KW;
          if (block && lo == 0 && hi == KW && xrow + iw0 * C + 32 <= x_end) {
            std::memcpy(row, xrow + iw0 * C, 32);
            continue;
          }
          if (lo > 0) std::memset(row, zp, static_cast<size_t>(lo * C));
          if (hi > lo) std::memcpy(row + lo * C, xrow + (iw0 + lo) * C, static_cast<size_t>((hi - lo) * C));
          if (hi < KW) std::memset(row + hi * C, zp, static_cast<size_t>((KW - hi) * C));
        } else {
          for (int64_t kw = 0; kw < KW; ++kw) {
            const int64_t iw = ow * G.stride[2] - G.pad[2] + kw * G.dil[2];
            if (hin && iw >= 0 && iw < G.in[2]) {
              std::memcpy(row + kw * Cg, xrow + iw * C, static_cast<size_t>(Cg));
            } else {
              std::memset(row + kw * Cg, zp, static_cast<size_t>(Cg));
            }
          }
        }
        if (rb > rlen) std::memset(row + rlen, zp, static_cast<size_t>(rb - rlen));
      }
    }
    if (++ow == G.out[2]) {
      ow = 0;
      if (++oh == G.out[1]) {
        oh = 0;
        if (++od == G.out[0]) {
          od = 0;
          ++n;
        }
      }
    }
  }
}

// Element strides of the input [N, C, *spatial] as (n, c, d, h, w); missing dimensions: 0.
struct InStrides {
  int64_t n, c, d, h, w;
};

InStrides in_strides(const at::Tensor& x, int nsp) {
  InStrides st{x.stride(0), x.stride(1), 0, 0, 0};
  if (nsp == 3) st.d = x.stride(2);
  if (nsp >= 2) st.h = x.stride(x.dim() - 2);
  st.w = x.stride(x.dim() - 1);
  return st;
}

// Row (n, d, ih) of the input into the channels-last dst [W, C], read through its strides.
// Channels-last input is one copy. A contiguous [N, C, H, W] input (what a QuantStub gives the
// stem) is transposed here instead of by a separate channels-last copy of the whole input:
// movedim(1, -1).contiguous() of a uint8 8x3x224x224 batch took 1050 us (2 threads) against
// 800 us for the whole stem convolution after it.
template <int kC>
void gather_row_planar(const uint8_t* xr, int64_t sc, int64_t W, int64_t C, uint8_t* dst) {
  if constexpr (kC == 3) {
    const uint8_t *x0 = xr, *x1 = xr + sc, *x2 = xr + 2 * sc;
    for (int64_t w = 0; w < W; ++w) {
      dst[3 * w] = x0[w];
      dst[3 * w + 1] = x1[w];
      dst[3 * w + 2] = x2[w];
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const uint8_t* xc = xr + c * sc;
      for (int64_t w = 0; w < W; ++w) dst[w * C + c] = xc[w];
    }
  }
}

void gather_row(const uint8_t* xr, const InStrides& st, int64_t W, int64_t C, uint8_t* dst) {
  if (st.c == 1 && st.w == C) {
    std::memcpy(dst, xr, static_cast<size_t>(W * C));
  } else if (st.w == 1) {
    if (C == 3) {
      gather_row_planar<3>(xr, st.c, W, C, dst);
    } else {
      gather_row_planar<0>(xr, st.c, W, C, dst);
    }
  } else {
    for (int64_t w = 0; w < W; ++w)
      for (int64_t c = 0; c < C; ++c) dst[w * C + c] = xr[w * st.w + c * st.c];
  }
}

// Rows [r0, r1) of the input with its spatial padding made real (zero-point bytes), in the
// implicit GEMM's padded view [planes, H + 2 * pad_h, W + 2 * pad_w, C] (row r: plane r / Hp,
// padded row r % Hp), columns [c0, c1) of it, into dst (row r0 first, c1 - c0 columns per
// row), read from the input in any layout. A tile inside one output row takes only the columns
// its receptive fields cover: a long 1-d signal (H = 1) is one row, and copying all of it for
// each tile made the convolution's cost grow with the square of its length.
void fill_padded_rows(const ConvSetup& s, const uint8_t* x, const InStrides& st, uint8_t zp,
                      int64_t Hp, int64_t r0, int64_t r1, int64_t c0, int64_t c1, uint8_t* dst) {
  const ConvGeometry& G = s.g;
  const int64_t C = G.C, D = G.in[0], H = G.in[1], W = G.in[2], ph = G.pad[1], pw = G.pad[2];
  const int64_t rowb = (c1 - c0) * C;
  // The window's columns inside the input: padded columns [a, b), input columns [a - pw, b - pw).
  const int64_t a = std::max(c0, pw), b = std::max(a, std::min(c1, pw + W));
  for (int64_t r = r0; r < r1; ++r) {
    uint8_t* d = dst + (r - r0) * rowb;
    const int64_t plane = r / Hp, ih = r % Hp - ph;
    if (ih < 0 || ih >= H || a == b) {
      std::memset(d, zp, static_cast<size_t>(rowb));
      continue;
    }
    std::memset(d, zp, static_cast<size_t>((a - c0) * C));
    gather_row(x + (plane / D) * st.n + (plane % D) * st.d + ih * st.h + (a - pw) * st.w, st, b - a, C,
               d + (a - c0) * C);
    std::memset(d + (b - c0) * C, zp, static_cast<size_t>((c1 - b) * C));
  }
}

struct ConvGrid {
  int64_t tiles, blocks;
};

// The task grid of run_conv_gemm: per group, `tiles` tiles of output pixels (split evenly) x
// `blocks` blocks of weight panels.
ConvGrid conv_grid(const ConvSetup& s, int64_t M, int64_t Kg, int64_t panels, int64_t mr, int nt,
                   bool serial, bool direct, bool implicit, bool vnni, bool amx) {
  const ConvGeometry& G = s.g;
  // Rows per tile: a tile's activations are re-read for every group of panels, so they should
  // stay in L2. im2col: its [rows, Kg] copy. 1x1 direct: [rows, C] read in place. Implicit
  // GEMM: the input rows its receptive fields cover (about stride_h * Wp * C bytes per output
  // row of OW pixels, overlapping fields read once), far less than rows * Kg: a 7x7x512 layer's
  // 49 pixels cover 41 KB of input against 225 KB of receptive fields.
  // On AVX-512 VNNI machines (L2 of 1 MiB or more) the tiles read in place may be twice as
  // large: late layers at batch 1 are then one tile whose panels the threads split (resnet50's
  // 7x7 1x1 2048->512 layer: 49 rows of 2 KiB; in two tiles of 24 rows, each thread streamed
  // the whole 1 MiB weight).
  int64_t per_row = std::max<int64_t>(Kg, 1), bytes = kTileBytes;
  if (direct) per_row = G.C;
  if (implicit) {
    const int64_t wp = G.in[2] + 2 * G.pad[2];
    per_row = std::max<int64_t>(1, G.stride[1] * wp * G.C / std::max<int64_t>(1, G.out[2]));
  }
  if ((direct || implicit) && vnni) bytes *= 2;
  // AMX multiplies an im2col tile several times faster: a larger tile (L2 of 2 MiB on those
  // machines) re-reads the weights less often, and late layers (K = 4608) still get blocks of
  // 32 rows.
  if (amx && !implicit) bytes *= 4;
  const int64_t limit = std::max<int64_t>(mr, bytes / per_row);
  int64_t tiles = (M + limit - 1) / limit;
  if (serial) return {tiles, 1};
  // at::parallel_for hands each thread one contiguous chunk of ceil(tasks / nt) tasks, so the
  // tasks must be of equal cost and their number a multiple of nt: 9 tasks on 2 threads run
  // as 5 + 4 (11% idle), and the old grid's unequal tiles (84, 84 and 28 rows for a 3x3
  // stride-2 128->256 layer at 28x28) gave one thread 2.3x the other's work.
  const int64_t max_tiles = std::max<int64_t>(1, (M + mr - 1) / mr);
  auto even = [&](int64_t t) { return (s.groups * t) % nt == 0; };
  if (s.groups * tiles >= nt) {
    int64_t t = tiles;
    while (!even(t) && t < max_tiles) ++t;
    return {even(t) ? t : tiles, 1};
  }
  // Fewer tiles than threads (small M: late layers at batch 1). Split the panels when each
  // thread then gets a whole register tile of them (4 panels): every weight byte is read once,
  // by one thread, where splitting the rows has every thread stream the whole weight (2.4 MB
  // for a 3x3 512->512 layer, past L2). im2col splits rows instead when its copy of the tile
  // (done by each thread that works on it) outweighs half the tile's weights.
  const int64_t need = (nt + s.groups * tiles - 1) / (s.groups * tiles);
  const int64_t kNV = 4;
  const bool panels_ok = panels >= need * kNV && (direct || implicit || M / tiles < 8 * panels);
  if (panels_ok) {
    int64_t b = need;
    while ((s.groups * tiles * b) % nt != 0 && b < panels / kNV) ++b;
    return {tiles, b};
  }
  int64_t t = std::min(max_tiles, tiles * need);
  while (!even(t) && t < max_tiles) ++t;
  return {t, 1};
}

// The kernel rows or columns [first, end) of one output row or column whose input position
// o * stride - pad + k * dil is inside [0, n) (none: (K, 0), which leaves a union of ranges as
// it was).
std::pair<int32_t, int32_t> inside_taps(int64_t o, int64_t stride, int64_t pad, int64_t dil,
                                        int64_t K, int64_t n) {
  const int64_t top = pad - o * stride;
  const int64_t first = top <= 0 ? 0 : (top + dil - 1) / dil;
  const int64_t last_num = n - 1 + top;  // k * dil <= last_num
  const int64_t end = last_num < 0 ? 0 : std::min<int64_t>(K, last_num / dil + 1);
  if (first >= end) return {static_cast<int32_t>(K), 0};
  return {static_cast<int32_t>(first), static_cast<int32_t>(end)};
}

// The padding classes of the implicit GEMM's output pixels (zero point 0): per output row oh
// and column ow, the index of its range of kernel rows (kh) and of kernel columns (as 4-byte
// groups of a run), and the ranges themselves.
struct PadClasses {
  std::vector<int32_t> row_of, col_of;  // class per oh / per ow
  std::vector<std::pair<int32_t, int32_t>> rows, cols;
  double col_waste = 0;  // the share of all taps that lie in the left / right padding
  // Per row class rc and output column ow, at rc * OW + ow: the pixel's four ranges
  // [lo, hi, glo, ghi) and its class (column class * rows.size() + rc).
  std::vector<std::array<int32_t, 4>> ranges;
  std::vector<int32_t> cls;
};

// The classes of rows and (skip_cols) columns, and the share of taps in the side padding (the
// per-pixel tables: pad_tables).
PadClasses pad_classes(const ConvGeometry& G, bool skip_cols, int32_t gps) {
  PadClasses pc;
  auto classify = [](std::vector<std::pair<int32_t, int32_t>>& list, std::pair<int32_t, int32_t> v) {
    for (size_t i = 0; i < list.size(); ++i)
      if (list[i] == v) return static_cast<int32_t>(i);
    list.push_back(v);
    return static_cast<int32_t>(list.size() - 1);
  };
  for (int64_t oh = 0; oh < G.out[1]; ++oh)
    pc.row_of.push_back(classify(pc.rows, inside_taps(oh, G.stride[1], G.pad[1], G.dil[1], G.k[1], G.in[1])));
  int64_t padded = 0;
  const int64_t C = G.C;
  for (int64_t ow = 0; ow < G.out[2]; ++ow) {
    std::pair<int32_t, int32_t> g{0, gps};
    if (skip_cols) {
      const auto t = inside_taps(ow, G.stride[2], G.pad[2], 1, G.k[2], G.in[2]);
      padded += G.k[2] - std::max(0, t.second - t.first);
      g = t.first < t.second ? std::pair<int32_t, int32_t>{static_cast<int32_t>(t.first * C / 4),
                                                           static_cast<int32_t>(t.second * C / 4)}
                             : std::pair<int32_t, int32_t>{gps, 0};
    }
    pc.col_of.push_back(classify(pc.cols, g));
  }
  pc.col_waste = static_cast<double>(padded) / static_cast<double>(std::max<int64_t>(1, G.out[2] * G.k[2]));
  return pc;
}

// pc's per-pixel tables (ranges, cls) for OW output columns: where tiles are gathered by class.
void pad_tables(PadClasses& pc, int64_t OW) {
  const int64_t nrow = static_cast<int64_t>(pc.rows.size());
  pc.ranges.resize(static_cast<size_t>(nrow * OW));
  pc.cls.resize(static_cast<size_t>(nrow * OW));
  for (int64_t rc = 0; rc < nrow; ++rc) {
    for (int64_t ow = 0; ow < OW; ++ow) {
      const auto& c = pc.cols[pc.col_of[ow]];
      pc.ranges[rc * OW + ow] = {pc.rows[rc].first, pc.rows[rc].second, c.first, c.second};
      pc.cls[rc * OW + ow] = static_cast<int32_t>(pc.col_of[ow] * nrow + rc);
    }
  }
}

// Rows [0, M) of an implicit GEMM tile (pointers r, ranges sr: four int32 per row, see
// SegSkip; cls: each row's class, col * nrow + row) reordered by padding
// class into ro, sro, with perm[i] the raster row that row i is (a counting sort). Pixels
// skipping the same kernel columns come together (one run per column class; cuts: the runs'
// bounds, 0 first and M last); within a run, the classes of kernel rows go largest first, each
// in raster order. A register tile of six rows then mostly holds pixels of one class and skips
// what they all skip: a 7x7 layer's pixels are 25 interior ones, 20 on edges and 4 corners, and
// six consecutive pixels in raster order nearly always include an edge. Any order gives the
// same sums: only what is skipped changes.
void padding_order(int64_t M, const uint8_t* const* r, const int32_t* sr, const int32_t* cls,
                   int32_t ncol, int32_t nrow, const uint8_t** ro, int32_t* sro, int32_t* perm,
                   std::vector<int32_t>& cuts) {
  thread_local std::vector<int32_t> count, next, rank;
  const int32_t ncls = ncol * nrow;
  count.assign(static_cast<size_t>(ncls), 0);
  next.assign(static_cast<size_t>(ncls), 0);
  rank.resize(static_cast<size_t>(nrow));
  for (int64_t i = 0; i < M; ++i) ++count[cls[i]];
  cuts.clear();
  int32_t o = 0;
  for (int32_t c = 0; c < ncol; ++c) {
    const int32_t* cc = count.data() + c * nrow;
    for (int32_t j = 0; j < nrow; ++j) rank[j] = j;
    std::stable_sort(rank.begin(), rank.end(), [&](int32_t a, int32_t b) { return cc[a] > cc[b]; });
    const int32_t begin = o;
    for (int32_t j = 0; j < nrow; ++j) {
      next[c * nrow + rank[j]] = o;
      o += cc[rank[j]];
    }
    if (o > begin) cuts.push_back(begin);
  }
  cuts.push_back(static_cast<int32_t>(M));
  for (int64_t i = 0; i < M; ++i) {
    const int32_t d = next[cls[i]]++;
    perm[d] = static_cast<int32_t>(i);
    ro[d] = r[i];
    std::memcpy(sro + 4 * int64_t{d}, sr + 4 * i, 4 * sizeof(int32_t));
  }
}

// Whether the AMX variant multiplies a layer of GEMM depth Kg through im2col tiles on AMX
// tiles (tile loads want rows at one stride) rather than through AVX-512 VNNI's implicit GEMM.
// Measured on one core of an AMX Xeon: 3x3 layers of 64 channels (Kg = 576) run 1.8x faster
// on tiles, 32 channels (288) about even, 16 channels (144) and the 7x7 stem (168) 0.6-0.8x: the
// copy of the receptive fields then costs more than the tiles save.
bool amx_im2col(int64_t Kg) { return Kg >= 256; }

// The AMX variant's implicit GEMM of a stride-1 convolution (one group, kernel depth 1, no
// dilation along W, kernel rows of whole 64-byte chunks: KW * C % 64 == 0, C a multiple of 64 for
// 3x3): tile loads want rows at one stride, and the output pixels of a block of output rows are
// at one stride C in the padded input view if the view's padding columns are computed too. So a
// task pads the input rows its block of output rows reads (as the AVX-512 implicit GEMM does)
// and multiplies "virtual" pixels v = row * Wp + column over the padded width Wp, of which the
// columns past OW are computed and dropped (2 of 58 at 56x56, 2 of 9 at 7x7): row v's K bytes
// are KH kernel rows of KW * C bytes, kernel row kh at v * C + kh * dil_h * Wp * C. No im2col
// copy: for 64-channel 3x3 layers that copy cost a third of the time.
bool amx_implicit_ok(const ConvSetup& s, int64_t rb) {
  const ConvGeometry& G = s.g;
  // The dropped columns must be few: at 14x14 (2 of 16) im2col tiles were 10 % faster, at 28x28
  // (2 of 30) the implicit GEMM 20 %, at 56x56 25 % (one core, 3x3 layers of ResNet-18).
  const int64_t Wp = G.in[2] + 2 * G.pad[2];
  // Output rows are int32 in the row map; a task's window (whole padded rows, at least the
  // kernel's height of them) stays within 1 MiB: a long 1-d signal (one row of a million
  // pixels) takes the im2col tiles, which cut rows into tiles.
  const int64_t window = (1 + (G.k[1] - 1) * G.dil[1]) * Wp * G.C;
  if (G.out_pixels() > INT32_MAX || window > (int64_t{1} << 20)) return false;
  const bool one_by_one = G.k[1] == 1 && G.k[2] == 1 && G.pad[1] == 0 && G.pad[2] == 0;  // read in place
  return !one_by_one && s.groups == 1 && G.k[0] == 1 && G.pad[0] == 0 && G.stride[1] == 1 && G.stride[2] == 1 &&
         G.dil[2] == 1 && rb == G.k[2] * G.C && rb % 64 == 0 && amx_im2col(packed_depth(s)) &&
         10 * G.out[2] >= 9 * Wp;
}

void run_conv_amx_implicit(const ConvSetup& s, const GemmProblem& base, const at::Tensor& xt,
                           char* out, const int8_t* packed) {
  const ConvGeometry& G = s.g;
  const int64_t C = G.C, KH = G.k[1], dh = G.dil[1], OH = G.out[1], OW = G.out[2];
  const int64_t Hp = G.in[1] + 2 * G.pad[1], Wp = G.in[2] + 2 * G.pad[2];
  const int64_t planes = G.N * G.out[0], Kg = packed_depth(s), panels = cpu::gemm_panels(s.Ng);
  const int64_t rowb = Wp * C, reach = (KH - 1) * dh;  // bytes per padded row; extra rows read
  const int nt = at::get_num_threads();
  const bool serial = nt <= 1 || G.out_pixels() * s.Cout * Kg < kSerialWork;
  // Output rows per task: the padded window in L2 (about 384 KiB), and at least 32 virtual pixels
  // (one block of two row tiles) where the image has them.
  int64_t per = std::max<int64_t>(1, 4 * kTileBytes / rowb - reach);
  const int64_t min_rows = std::min<int64_t>(OH, (32 - OW + Wp - 1) / Wp + 1);
  per = std::min(OH, std::max(per, min_rows));
  int64_t tpp = (OH + per - 1) / per;  // tasks per output plane
  int64_t nblocks = 1;
  if (!serial) {
    // Equal tasks, their number a multiple of the threads (see conv_grid); too few row blocks:
    // split the panels (pairs) instead.
    while ((planes * tpp) % nt != 0 && OH / (tpp + 1) >= min_rows) ++tpp;
    if (planes * tpp < nt) nblocks = std::min<int64_t>(nt, std::max<int64_t>(1, panels / 2));
  }
  const int64_t tasks = planes * tpp * nblocks;
  const uint8_t zp = static_cast<uint8_t>(base.a_zp);
  const uint8_t* src = static_cast<const uint8_t*>(xt.const_data_ptr());
  const InStrides st = in_strides(xt, s.nsp);
  auto run = [&](int64_t t0, int64_t t1) {
    thread_local std::vector<uint8_t> pbuf;
    thread_local std::vector<int32_t> rows_out;
    int64_t have = -1;
    uint8_t* pb = nullptr;
    int64_t mv = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nb = t % nblocks, tile = t / nblocks;
      const int64_t plane = tile / tpp, ti = tile % tpp;
      const int64_t oh0 = ti * OH / tpp, oh1 = (ti + 1) * OH / tpp;
      const int64_t p0 = nb * panels / nblocks, p1 = (nb + 1) * panels / nblocks;
      if (oh0 >= oh1 || p0 >= p1) continue;
      if (tile != have) {
        // Input plane of output plane (n, od): n * D + od * stride_d (kernel depth 1).
        const int64_t n = plane / G.out[0], od = plane % G.out[0];
        const int64_t in_plane = n * G.in[0] + od * G.stride[0];
        const int64_t lo = in_plane * Hp + oh0, hi = in_plane * Hp + oh1 + reach;
        pb = cpu::scratch(pbuf, static_cast<size_t>((hi - lo) * rowb));
        fill_padded_rows(s, src, st, zp, Hp, lo, hi, 0, Wp, pb);
        // The last row's virtual pixels stop at OW - 1, whose kernel window ends at the
        // window's last byte.
        mv = (oh1 - oh0 - 1) * Wp + OW;
        int32_t* ro = cpu::scratch(rows_out, static_cast<size_t>(mv));
        const int64_t first = (plane * OH + oh0) * OW;
        for (int64_t v = 0; v < mv; ++v) {
          const int64_t col = v % Wp;
          ro[v] = col < OW ? static_cast<int32_t>(first + (v / Wp) * OW + col) : -1;
        }
        have = tile;
      }
      GemmProblem p = base;
      p.N = s.Ng;
      p.K = Kg;
      p.w = packed;
      p.out = out;
      p.ldo = s.Cout;
      cpu::gemm_compute_runs__amx(p, pb, C, mv, G.k[2] * C, dh * rowb, rows_out.data(), p0, p1);
    }
  };
  if (serial) {
    run(0, tasks);
  } else {
    at::parallel_for(0, tasks, 1, run);
  }
}

void run_conv_gemm(const ConvSetup& s, const GemmProblem& base, const at::Tensor& xt, char* out,
                   const int8_t* packed) {
  const ConvKernels& k = conv_kernels();
  const ConvGeometry& G = s.g;
  const int64_t M = G.out_pixels(), C = G.C, Kg = packed_depth(s), rb = row_bytes(s);
  if (k.amx && amx_implicit_ok(s, rb)) {
    run_conv_amx_implicit(s, base, xt, out, packed);
    return;
  }
  const int64_t ob = cpu::gemm_out_bytes(base.out_kind);
  const int64_t panels = cpu::gemm_panels(s.Ng);
  const bool direct = G.taps() == 1 && G.stride[0] == 1 && G.stride[1] == 1 && G.stride[2] == 1 &&
                      G.pad[0] == 0 && G.pad[1] == 0 && G.pad[2] == 0;
  // Implicit GEMM (AVX-512 VNNI): no im2col. Each kernel row of a receptive field is a
  // contiguous run of the (padded) input when there is one group and no dilation along W, so
  // the micro-kernel reads it in place, row by row, through per-pixel pointers. Needs 2-d
  // kernels (a kernel of depth 1 and no depth padding: 3-d inputs are then planes) and kernel
  // rows of whole 4-byte groups.
  // AMX: im2col tiles on the tile kernel, where the layer is deep enough and its tiles will have
  // rows enough (fewer than 16 rows would copy their receptive fields for AVX-512 VNNI anyway):
  // 64 output pixels or more, or 16 or more where the threads split the panels rather than the
  // pixels (a 512-channel 3x3 layer at 7x7, batch 1: 49 rows, 2x faster on tiles).
  const int64_t panels_all = cpu::gemm_panels(s.Ng);
  const bool amx_tiles = k.amx && amx_im2col(Kg) && (M >= 64 || (M >= 16 && panels_all >= 16));
  const bool implicit = !direct && k.segs != nullptr && s.groups == 1 && G.k[0] == 1 &&
                        G.pad[0] == 0 && G.dil[2] == 1 && rb % 4 == 0 && !amx_tiles;
  const int64_t mr = k.mr();
  const int nt = at::get_num_threads();
  const bool serial = nt <= 1 || M * s.Cout * std::max<int64_t>(Kg, 16) < kSerialWork;
  const ConvGrid grid = conv_grid(s, M, Kg, panels, mr, nt, serial, direct, implicit, k.segs != nullptr,
                                  amx_tiles);
  const int64_t tiles = grid.tiles, nblocks = grid.blocks;
  const int64_t rows = (M + tiles - 1) / tiles;  // the largest tile's (scratch)
  const int64_t tasks = s.groups * tiles * nblocks;
  const uint8_t zp = static_cast<uint8_t>(base.a_zp);
  // The implicit GEMM's view of the input: in place, or padded when the kernel reaches past its
  // border or reads padded kernel rows (which run up to 3 bytes past the last tap).
  // The padded copy reads the input in whatever layout it comes; the other paths read it
  // channels-last (a view when it is so already).
  // Each task pads the input rows its tile reads into thread-local scratch (the rows two tiles
  // share are copied twice) instead of one padded copy of the whole input before the GEMM: that
  // copy ran on one thread below 256 KiB (every layer of resnet18 at batch 1) while the other
  // waited, and above it cost a parallel region of its own; here the copy is split like the
  // GEMM and its rows are in L2 when the GEMM reads them.
  at::Tensor xc;
  const uint8_t *x = nullptr, *src = nullptr;
  int64_t Hp = G.in[1], Wp = G.in[2];
  const bool tile_pad = implicit && (G.pad[1] != 0 || G.pad[2] != 0 || rb != G.k[2] * C);
  // Kernel rows and columns that fall in the padding of every pixel of a register tile are
  // skipped where the padding adds nothing: unsigned activations of zero point 0 (after a ReLU:
  // most of a ResNet's 3x3 layers), whose zero-point correction is zero too. torch.ao's
  // kernels skip padded taps as well; a 7x7 layer's 3x3 taps are 18 % padding. Columns are
  // skipped where each kernel column of a run is whole 4-byte groups (C a multiple of 4).
  const bool zp0 = tile_pad && base.a_unsigned && base.a_zp == 0 && base.a_zp_row == nullptr;
  const bool cols_ok = zp0 && G.pad[2] != 0 && C % 4 == 0 && rb == G.k[2] * C;
  const int32_t gps = static_cast<int32_t>(rb / 4);
  PadClasses pc = zp0 && (G.pad[1] != 0 || cols_ok) ? pad_classes(G, cols_ok, gps) : PadClasses{};
  // Columns are skipped only where a tile's pixels are gathered by padding class
  // (padding_order): in raster order nearly every tile of six holds a border pixel and skips no
  // column. Gathering pays where the left / right padding is a large enough share of the taps
  // (9.5 % of a 7x7 layer's 3x3 taps, 1.2 % at 56x56); below that, the reordering and the
  // column ranges cost more than they save, and tiles run in raster order (afresh at each
  // image where rows are skipped).
  const int32_t ncol = static_cast<int32_t>(pc.cols.size()), nrow = static_cast<int32_t>(pc.rows.size());
  const bool by_class = cols_ok && ncol > 1 && int64_t{ncol} * nrow <= 256 && pc.col_waste >= 0.04;
  if (by_class) pad_tables(pc, G.out[2]);
  const bool skip_pad = zp0 && (G.pad[1] != 0 || by_class);
  const int64_t sr_ints = by_class ? 4 : 2;  // per pixel: kernel rows [, groups of a run]
  InStrides st{};
  if (tile_pad) {
    Hp += 2 * G.pad[1];
    Wp += 2 * G.pad[2];
    src = static_cast<const uint8_t*>(xt.const_data_ptr());
    st = in_strides(xt, s.nsp);
  } else {
    xc = conv_channels_last_input(xt);
    x = static_cast<const uint8_t*>(xc.const_data_ptr());
    src = x;
  }
  const uint8_t* x_end = x != nullptr ? x + s.g.N * s.g.in[0] * s.g.in[1] * s.g.in[2] * s.g.C : nullptr;
  auto run = [&](int64_t t0, int64_t t1) {
    thread_local std::vector<uint8_t> buf, pbuf;
    thread_local std::vector<const uint8_t*> rp;
    thread_local std::vector<int32_t> srp, srp_raster, permp, cuts, clsp;
    thread_local std::vector<const uint8_t*> rp_raster;
    int64_t have_g = -1, have_tile = -1;
    int64_t seg_stride = G.dil[1] * Wp * C;  // bytes between kernel rows in the tile's view
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nb = t % nblocks, tile = (t / nblocks) % tiles, g = t / (nblocks * tiles);
      const int64_t m0 = tile * M / tiles, m1 = (tile + 1) * M / tiles;
      const int64_t p0 = nb * panels / nblocks, p1 = (nb + 1) * panels / nblocks;
      if (p0 >= p1) continue;
      GemmProblem p = base;
      p.M = m1 - m0;
      p.N = s.Ng;
      p.K = Kg;
      p.w = packed + g * panels * Kg * cpu::kPanel;
      p.col_sums = base.col_sums + g * s.Ng;
      p.w_scale = base.w_scale + g * s.Ng;
      p.bias = base.bias != nullptr ? base.bias + g * s.Ng : nullptr;
      p.out = out + (m0 * s.Cout + g * s.Ng) * ob;
      p.ldo = s.Cout;
      if (direct) {
        k.compute(p, x + m0 * C + g * s.Cg, C, 0, p.M, p0, p1);
        continue;
      }
      if (implicit) {
        // Pointers and ranges in raster order; by_class: then reordered by padding class
        // (perm: each row's output row).
        const uint8_t** r = cpu::scratch(by_class ? rp_raster : rp, static_cast<size_t>(p.M));
        int32_t* sr = nullptr;
        int32_t* cls = nullptr;
        if (skip_pad) {
          std::vector<int32_t>& v = by_class ? srp_raster : srp;
          sr = cpu::scratch(v, static_cast<size_t>(sr_ints * p.M));
        }
        if (by_class) cls = cpu::scratch(clsp, static_cast<size_t>(p.M));
        if (tile != have_tile) {
          // Counters, not divisions per pixel (a 64-bit division costs as much as a few groups).
          int64_t ow = m0 % G.out[2], q = m0 / G.out[2], oh = q % G.out[1];
          q /= G.out[1];
          int64_t od = q % G.out[0], n = q / G.out[0];
          const int64_t step = G.stride[2] * C;
          int64_t c0 = 0, rowb = Wp * C;  // the view's first column and bytes per row
          // The view's rows [lo, hi) that the tile's receptive fields cover (from the first
          // pixel's top row to the last pixel's bottom one): padded into pbuf (64 bytes of
          // zero-point slack after them, which the last padded kernel row may read), or read
          // in place.
          const uint8_t* view = src;
          int64_t lo = 0;
          if (tile_pad) {
            const int64_t q1 = (m1 - 1) / G.out[2], oh1 = q1 % G.out[1], od1 = (q1 / G.out[1]) % G.out[0];
            const int64_t n1 = q1 / (G.out[1] * G.out[0]);
            lo = (n * G.in[0] + od * G.stride[0]) * Hp + oh * G.stride[1];
            const int64_t hi = (n1 * G.in[0] + od1 * G.stride[0]) * Hp + oh1 * G.stride[1] +
                               (G.k[1] - 1) * G.dil[1] + 1;
            int64_t c1 = Wp;
            if (q1 == m0 / G.out[2]) {  // one output row: the columns its fields cover
              c0 = ow * G.stride[2];
              c1 = ((m1 - 1) % G.out[2]) * G.stride[2] + (G.k[2] - 1) * G.dil[2] + 1;
              rowb = (c1 - c0) * C;
            }
            uint8_t* pb = cpu::scratch(pbuf, static_cast<size_t>((hi - lo) * rowb + 64));
            fill_padded_rows(s, src, st, zp, Hp, lo, hi, c0, c1, pb);
            std::memset(pb + (hi - lo) * rowb, zp, 64);
            view = pb;
          }
          const uint8_t* rowp = nullptr;
          // Per pixel: the kernel rows whose input row is inside, and the kernel columns (as
          // groups of a run) whose input column is; by_class: its class.
          const int32_t* row_of = pc.row_of.data();
          const std::array<int32_t, 4>* ranges = pc.ranges.data();
          const int32_t* cls_of = pc.cls.data();
          int64_t rbase = 0;  // the output row's class * OW
          int32_t kh[2] = {0, 0};
          for (int64_t m = m0; m < m1; ++m) {
            if (m == m0 || ow == 0) {
              const int64_t plane = n * G.in[0] + od * G.stride[0];
              rowp = view + ((plane * Hp + oh * G.stride[1]) - lo) * rowb;
              if (skip_pad) {
                rbase = row_of[oh] * G.out[2];
                kh[0] = pc.rows[row_of[oh]].first;
                kh[1] = pc.rows[row_of[oh]].second;
              }
            }
            r[m - m0] = rowp + (ow * step - c0 * C);
            if (by_class) {
              std::memcpy(sr + 4 * (m - m0), ranges[rbase + ow].data(), 4 * sizeof(int32_t));
              cls[m - m0] = cls_of[rbase + ow];
            } else if (skip_pad) {
              sr[2 * (m - m0)] = kh[0];
              sr[2 * (m - m0) + 1] = kh[1];
            }
            if (++ow == G.out[2]) {
              ow = 0;
              if (++oh == G.out[1]) {
                oh = 0;
                if (++od == G.out[0]) {
                  od = 0;
                  ++n;
                }
              }
            }
          }
          if (by_class) {
            padding_order(p.M, r, sr, cls, ncol, nrow, cpu::scratch(rp, static_cast<size_t>(p.M)),
                          cpu::scratch(srp, static_cast<size_t>(4 * p.M)),
                          cpu::scratch(permp, static_cast<size_t>(p.M)), cuts);
          }
          have_tile = tile;
          seg_stride = G.dil[1] * rowb;
        }
        if (by_class) {
          // One call per column class: its register tiles never mix pixels that skip different
          // kernel columns.
          const uint8_t* const* rs = rp.data();
          for (size_t c = 0; c + 1 < cuts.size(); ++c) {
            const int64_t a = cuts[c], b = cuts[c + 1];
            const cpu::SegSkip sk{srp.data() + 4 * a, permp.data() + a};
            k.segs(p, rs + a, G.k[1], seg_stride, a, b, p0, p1, &sk);
          }
        } else if (skip_pad) {
          // Register tiles start afresh at each image (plane of output pixels): its first and
          // last output rows then fill whole tiles that skip their padded kernel rows, where
          // tiles running on from the last image would straddle them.
          const int64_t plane = G.out[1] * G.out[2];
          for (int64_t a = 0; a < p.M;) {
            const int64_t b = std::min<int64_t>(p.M, ((m0 + a) / plane + 1) * plane - m0);
            const cpu::SegSkip sk{sr + 2 * a, nullptr};
            k.segs(p, r + a, G.k[1], seg_stride, a, b, p0, p1, &sk);
            a = b;
          }
        } else {
          k.segs(p, r, G.k[1], seg_stride, 0, p.M, p0, p1, nullptr);
        }
        continue;
      }
      // 32 bytes of slack: im2col's block copies run past the last row.
      uint8_t* a = cpu::scratch(buf, static_cast<size_t>(rows * Kg + 32));
      if (g != have_g || tile != have_tile) {
        im2col_tile(s, x, x_end, g, m0, m1, zp, a);
        have_g = g;
        have_tile = tile;
      }
      k.compute(p, a, Kg, 0, p.M, p0, p1);
    }
  };
  if (serial) {
    run(0, tasks);
  } else {
    at::parallel_for(0, tasks, 1, run);
  }
}

void run_conv_dw(const ConvSetup& s, const GemmProblem& base, const void* x, void* out,
                 const int8_t* w) {
  cpu::DwProblem p;
  p.g = s.g;
  p.x = x;
  p.w = w;
  p.e = base;
  p.out_base = out;
  // AVX2: rows of up to 16 pixels are mostly border (a 7 x 7 layer's 3 x 3 taps reach the
  // padding from 24 of its 49 pixels), and the kernel's border pixels take one tap at a time
  // with bounds checks. A zero-point-filled copy with the padding in place puts every pixel
  // inside the input; the sums are the same (a padded tap reads the zero point either way).
  at::Tensor padded;
  const ConvGeometry& G = s.g;
  if (is_avx2_class(cpu_isa()) && G.out[2] <= 16 && (G.pad[0] | G.pad[1] | G.pad[2]) != 0) {
    const int64_t Dp = G.in[0] + 2 * G.pad[0], Hp = G.in[1] + 2 * G.pad[1], Wp = G.in[2] + 2 * G.pad[2];
    padded = at::empty({G.N * Dp * Hp * Wp * G.C}, at::TensorOptions().dtype(at::kByte));
    uint8_t* dst = padded.data_ptr<uint8_t>();
    std::memset(dst, static_cast<uint8_t>(base.a_zp), static_cast<size_t>(padded.numel()));
    const auto* src = static_cast<const uint8_t*>(x);
    const int64_t row = G.in[2] * G.C;
    for (int64_t n = 0; n < G.N; ++n)
      for (int64_t d = 0; d < G.in[0]; ++d)
        for (int64_t h = 0; h < G.in[1]; ++h)
          std::memcpy(dst + (((n * Dp + d + G.pad[0]) * Hp + h + G.pad[1]) * Wp + G.pad[2]) * G.C,
                      src + ((n * G.in[0] + d) * G.in[1] + h) * row, static_cast<size_t>(row));
    p.x = dst;
    p.g.in[0] = Dp;
    p.g.in[1] = Hp;
    p.g.in[2] = Wp;
    p.g.pad[0] = p.g.pad[1] = p.g.pad[2] = 0;
  }
  const auto fn = conv_kernels().dw;
  const int64_t rows = s.g.N * s.g.out[0] * s.g.out[1];
  const int64_t per_row = std::max<int64_t>(1, s.g.out[2] * s.g.C * s.g.taps());
  if (at::get_num_threads() <= 1 || rows * per_row < kSerialWork / 4) {
    fn(p, 0, rows);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / per_row);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) { fn(p, r0, r1); });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pack_conv_weight_cpu(const at::Tensor& w, int64_t groups) {
  const ConvSetup s = conv_weight_setup(w, groups);
  const int64_t taps = s.g.taps();
  if (s.depthwise) {
    // [*kernel_size, C]: the channels of one tap contiguous, as the depthwise kernels read them.
    at::Tensor packed = w.reshape({s.Cout, taps}).t().contiguous().view(kernel_shaped(s.nsp, s.g, {}, {s.Cout}));
    at::Tensor col_sums = w.reshape({s.Cout, taps}).sum(1, /*keepdim=*/false, at::kInt);
    return {packed, col_sums};
  }
  // Per group, the weight as a [Ng, taps * Cg] GEMM operand (tap-major, channels inner: the
  // order of the channels-last im2col rows), each kernel row zero-padded to row_bytes, packed
  // into 16-channel panels.
  const int64_t rb = row_bytes(s), Kp = packed_depth(s), rlen = s.g.k[2] * s.Cg;
  at::Tensor wk = w.reshape({groups, s.Ng, s.Cg, taps}).permute({0, 1, 3, 2}).contiguous();
  if (rb != rlen) {
    wk = at::constant_pad_nd(wk.reshape({groups, s.Ng, Kp / rb, rlen}), {0, rb - rlen}, 0).contiguous();
  }
  const int64_t panels = cpu::gemm_panels(s.Ng);
  const int64_t body = groups * panels * Kp * cpu::kPanel;
  at::Tensor packed = at::empty({body + cpu::kRecordBytes}, w.options());
  at::Tensor col_sums = at::empty({s.Cout}, w.options().dtype(at::kInt));
  const int8_t* pw = wk.const_data_ptr<int8_t>();
  int8_t* pp = packed.data_ptr<int8_t>();
  int32_t* pc = col_sums.data_ptr<int32_t>();
  for (int64_t g = 0; g < groups; ++g) {
    cpu::gemm_pack_weight(pw + g * s.Ng * Kp, Kp, 1, s.Ng, Kp, pp + g * panels * Kp * cpu::kPanel,
                          pc + g * s.Ng);
  }
  cpu::write_packed_record(packed, body, conv_record(s));
  return {packed, col_sums};
}

at::Tensor conv_int8_cpu(const at::Tensor& x, const at::Tensor& x_scale,
                         const at::Tensor& x_zero_point, const at::Tensor& w_packed,
                         const at::Tensor& w_col_sums, const at::Tensor& w_scale,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                         int64_t groups, const std::optional<at::Tensor>& out_scale,
                         const std::optional<at::Tensor>& out_zero_point, bool relu,
                         std::optional<at::ScalarType> out_dtype) {
  const ConvSetup s = conv_setup(x, w_col_sums, kernel_size, stride, padding, dilation, groups);
  check_cpu(x, "x");
  TORCH_CHECK(w_packed.defined(), "argument 'w_packed' must be a tensor, got None");
  check_same_device(x, "x", w_packed, "w_packed");
  TORCH_CHECK(w_packed.scalar_type() == at::kChar && w_packed.is_contiguous(),
              "argument 'w_packed' must be a contiguous int8 tensor from pack_conv_weight, got dtype ",
              w_packed.scalar_type());
  if (s.depthwise) {
    const std::vector<int64_t> want = kernel_shaped(s.nsp, s.g, {}, {s.Cout});
    TORCH_CHECK(w_packed.sizes() == at::IntArrayRef(want),
                "argument 'w_packed' must be the depthwise packing [*kernel_size, C] = ", at::IntArrayRef(want),
                " (pack_conv_weight of a [", s.Cout, ", 1, *kernel_size] weight with groups=", groups,
                "), got shape ", w_packed.sizes());
  } else {
    cpu::check_packed_record(w_packed, groups * cpu::gemm_panels(s.Ng) * packed_depth(s) * cpu::kPanel,
                             conv_record(s), "pack_conv_weight", "groups * ceil(Cout/groups/16) * K * 16");
  }
  const bool u = x.scalar_type() == at::kByte;
  GemmProblem p;
  p.a_unsigned = u;
  p.a_scale = read_scale(x_scale, "x_scale");
  p.a_zp = read_zero_point(x_zero_point, "x_zero_point", u ? 0 : -128, u ? 255 : 127);
  const at::Tensor ws = per_channel_float(w_scale, "w_scale", s.Cout);
  check_scale_values(w_scale, ws.const_data_ptr<float>(), s.Cout, "w_scale", "channel");
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = per_channel_float(*bias, "bias", s.Cout);
  const at::ScalarType odt = cpu::read_gemm_output(p, out_scale, out_zero_point, out_dtype);
  const bool low_float = odt == at::kHalf || odt == at::kBFloat16;
  p.col_sums = w_col_sums.const_data_ptr<int32_t>();
  p.w_scale = ws.const_data_ptr<float>();
  p.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  cpu::set_nan_free(p, s.Cout);
  p.relu = relu;
  at::Tensor out = conv_empty_output(s, x.options().dtype(low_float ? at::kFloat : odt), true);
  if (out.numel() == 0) return low_float ? out.to(odt) : out;
  // out is [N, Cout, *spatial] over channels-last memory: its data pointer is the [M, Cout] matrix.
  char* po = static_cast<char*>(out.data_ptr());
  if (s.depthwise) {
    const at::Tensor xc = conv_channels_last_input(x);
    run_conv_dw(s, p, xc.const_data_ptr(), po, w_packed.const_data_ptr<int8_t>());
  } else {
    run_conv_gemm(s, p, x, po, w_packed.const_data_ptr<int8_t>());
  }
  return low_float ? out.to(odt) : out;
}

TORCH_LIBRARY_IMPL(torchquant, CPU, m) {
  m.impl("pack_conv_weight", &pack_conv_weight_cpu);
  m.impl("conv_int8", &conv_int8_cpu);
}

}  // namespace torchquant
