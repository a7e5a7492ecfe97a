// CPU adapter of the int8 transposed convolution ops: argument checks, weight packing, the
// task grid over threads and the choice of kernel variant.
//
// A transposed convolution scatters each input pixel: output pixel o receives
// (x[i] - zp) * w[tap] for every input pixel i and tap with o = i * stride - padding +
// tap * dilation. Per group and depth tap, the weight is one GEMM operand [khw * Ng, Cg]
// (columns (kh, kw, output channel)) packed for the GEMM micro-kernels (gemm_compute__<isa>).
// A task owns a band of output rows of one image, group and output depth: it multiplies the
// input rows that reach the band (read in place, channels-last) with the packed weight into
// int32 columns, a chunk of input pixels and panels at a time (the kernels' int32 output: the
// zero-point correction done, exact), adds each column's run of output channels into an int32
// tile of the band's output pixels (col2im, in thread-local scratch, never the whole output),
// and ends in the requantize epilogue of linear_int8 (conv_transpose_*.cpp). Every term of
// the sum is an input pixel times a weight, so no padded position enters it: the integer
// result is exact, and each variant gives the same bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/checks.h"
#include "common/conv_checks.h"
#include "common/conv_transpose_checks.h"
#include "cpu/conv_kernels.h"
#include "cpu/conv_transpose_kernels.h"
#include "cpu/gemm_args.h"
#include "cpu/isa.h"
#include "cpu/packed_record.h"
#include "ops.h"

namespace torchquant {
namespace {

// The GEMM of one chunk of input pixels by a run of weight panels into an int32 tile (width
// columns per row); col2im and the epilogue come after.
cpu::GemmProblem int32_tile(const cpu::GemmProblem& base, int64_t rows, int64_t width, int64_t K, const int8_t* w,
                       const int32_t* col_sums, int32_t* out) {
  cpu::GemmProblem p = base;
  p.M = rows;
  p.N = width;
  p.K = K;
  p.w = w;
  p.col_sums = col_sums;
  p.out_kind = cpu::GemmOut::Int32;
  p.out = out;
  p.ldo = width;
  p.bias = nullptr;
  p.relu = false;
  return p;
}


using cpu::GemmOut;
using cpu::GemmProblem;

struct CtKernels {
  decltype(&cpu::gemm_mr__scalar) mr;
  decltype(&cpu::gemm_compute__scalar) compute;
  decltype(&cpu::conv_transpose_epilogue__scalar) epilogue;
};

const CtKernels& ct_kernels() {
  static const CtKernels scalar{cpu::gemm_mr__scalar, cpu::gemm_compute__scalar,
                                cpu::conv_transpose_epilogue__scalar};
  static const CtKernels avx2{cpu::gemm_mr__avx2, cpu::gemm_compute__avx2,
                              cpu::conv_transpose_epilogue__avx2};
  static const CtKernels avxvnni{cpu::gemm_mr__avx2, cpu::gemm_compute__avxvnni,
                                 cpu::conv_transpose_epilogue__avx2};
  static const CtKernels vnni{cpu::gemm_mr__avx512vnni, cpu::gemm_compute__avx512vnni,
                              cpu::conv_transpose_epilogue__avx512vnni};
  switch (cpu_isa()) {
    case CpuIsa::Amx:  // its per-tap GEMMs are small (a tile of rows x Cin): AVX-512 VNNI's
    case CpuIsa::Avx512Vnni: return vnni;
    case CpuIsa::AvxVnni: return avxvnni;
    case CpuIsa::Avx2: return avx2;
    default: return scalar;
  }
}

// Below this many multiply-adds a thread wake-up costs more than it saves.
constexpr int64_t kSerialWork = int64_t{1} << 20;
// The int32 tile of a band's output pixels, and the int32 columns of one GEMM chunk: each
// inside L2 next to the other.
constexpr int64_t kAccBytes = int64_t{192} << 10;
constexpr int64_t kColBytes = int64_t{128} << 10;
constexpr int64_t kMaxColPanels = 32;
constexpr int64_t kMaxChunkRows = 192;

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// Kernel size equal to the stride (no dilation, no output_padding) in every dimension, as in
// UNet's 2x2 stride-2 upsampling: every output pixel is reached by exactly one (input pixel,
// tap), so there is nothing to add up. A task takes one input row of one group (and a range of
// channel blocks); the GEMM's int32 columns of each tap go through the epilogue straight into
// the output pixels they reach (stride * Cout apart), with no int32 tile and no col2im.
bool reached_once(const ConvTransposeSetup& s) {
  const ConvGeometry& G = s.g;
  if (s.Cg == 0) return false;  // no input channels: every output is its bias (the tile path)
  for (int e = 0; e < 3; ++e) {
    if (G.k[e] != G.stride[e] || s.out_pad[e] != 0 || (G.k[e] != 1 && G.dil[e] != 1)) return false;
  }
  return true;
}

void run_conv_transpose_once(const ConvTransposeSetup& s, const GemmProblem& base, const uint8_t* x,
                             char* out, const int8_t* packed, const int32_t* col_sums) {
  const CtKernels& k = ct_kernels();
  const ConvGeometry& G = s.g;
  const int64_t ID = G.in[0], IH = G.in[1], IW = G.in[2];
  const int64_t OD = G.out[0], OH = G.out[1], OW = G.out[2];
  const int64_t KD = G.k[0], KW = G.k[2], khw = s.khw;
  const int64_t C = G.C, Cg = s.Cg, Ng = s.Ng, Cout = s.Cout, groups = s.groups;
  const int64_t cb = s.channel_block(), nblk = Ng / cb, run = khw * cb;
  const int64_t cols = s.cols(), panels = cpu::gemm_panels(cols);
  const int64_t ob = cpu::gemm_out_bytes(base.out_kind);
  const int64_t mr = k.mr();
  const int64_t outer = G.N * ID * IH * groups;
  const int nt = at::get_num_threads();
  const int64_t work = G.N * ID * IH * IW * C * Ng * G.taps();
  const bool serial = nt <= 1 || work < kSerialWork;
  const int64_t csplit = serial || outer >= 2 * nt ? 1 : std::min(nblk, ceil_div(2 * nt, outer));
  const int64_t tasks = outer * csplit;
  const int64_t pchunk = std::max<int64_t>(1, std::min(panels, kMaxColPanels));
  const int64_t ccols = pchunk * cpu::kPanel;
  int64_t rows = std::min<int64_t>(kMaxChunkRows, kColBytes / (4 * ccols));
  rows = std::max<int64_t>(mr, rows / mr * mr);

  auto body = [&](int64_t t0, int64_t t1) {
    thread_local std::vector<int32_t> col_buf;
    int32_t* col = cpu::scratch(col_buf, static_cast<size_t>(rows * ccols));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t cs_i = t % csplit;
      int64_t r = t / csplit;
      const int64_t g = r % groups;
      r /= groups;
      const int64_t ih = r % IH;
      r /= IH;
      const int64_t id = r % ID, n = r / ID;
      const int64_t jb0 = cs_i * nblk / csplit, jb1 = (cs_i + 1) * nblk / csplit;
      if (jb0 >= jb1) continue;
      const int64_t c_lo = jb0 * run, c_hi = jb1 * run;
      const int64_t p_lo = c_lo / cpu::kPanel, p_hi = cpu::gemm_panels(c_hi);
      const uint8_t* a = x + (((n * ID + id) * IH + ih) * IW) * C + g * Cg;
      for (int64_t kd = 0; kd < KD; ++kd) {
        const int64_t od = id * G.stride[0] - G.pad[0] + kd;
        if (od < 0 || od >= OD) continue;
        const int64_t wi = g * KD + kd;
        const int8_t* wk = packed + wi * panels * Cg * cpu::kPanel;
        const int32_t* cs = col_sums + wi * cols;
        for (int64_t m0 = 0; m0 < IW; m0 += rows) {
          const int64_t mrows = std::min(rows, IW - m0);
          for (int64_t pp = p_lo; pp < p_hi; pp += pchunk) {
            const int64_t pe = std::min(p_hi, pp + pchunk);
            const int64_t c0 = pp * cpu::kPanel, c1 = std::min(cols, pe * cpu::kPanel), width = c1 - c0;
            const GemmProblem p = int32_tile(base, mrows, width, Cg, wk + pp * Cg * cpu::kPanel, cs + c0, col);
            k.compute(p, a + m0 * C, C, 0, mrows, 0, pe - pp);
            for (int64_t q = c0 / cb; q * cb < c1; ++q) {
              const int64_t tap = q % khw, blk = q / khw, kh = tap / KW, kw = tap % KW;
              const int64_t oh = ih * G.stride[1] - G.pad[1] + kh;
              if (oh < 0 || oh >= OH) continue;
              // Input pixels [m0 + i_lo, m0 + i_hi) of the chunk land inside the output row.
              const int64_t sw = G.stride[2], off = kw - G.pad[2];
              const int64_t i_lo = std::max<int64_t>(0, ceil_div(-off, sw) - m0);
              const int64_t i_hi = std::min<int64_t>(mrows, floor_div(OW - 1 - off, sw) + 1 - m0);
              if (i_lo >= i_hi) continue;
              const int64_t j0 = std::max(c0, q * cb), j1 = std::min(c1, (q + 1) * cb);
              const int64_t ch = g * Ng + blk * cb + (j0 - q * cb);
              const int64_t ow = (m0 + i_lo) * sw + off;
              GemmProblem e = base;
              e.w_scale = base.w_scale + ch;
              e.bias = base.bias != nullptr ? base.bias + ch : nullptr;
              e.out = out + ((((n * OD + od) * OH + oh) * OW + ow) * Cout + ch) * ob;
              e.ldo = sw * Cout;
              k.epilogue(e, col + i_lo * width + (j0 - c0), width, i_hi - i_lo, j1 - j0);
            }
          }
        }
      }
    }
  };
  if (serial) {
    body(0, tasks);
  } else {
    at::parallel_for(0, tasks, 1, body);
  }
}

void run_conv_transpose(const ConvTransposeSetup& s, const GemmProblem& base, const uint8_t* x,
                        char* out, const int8_t* packed, const int32_t* col_sums) {
  const CtKernels& k = ct_kernels();
  const ConvGeometry& G = s.g;
  const int64_t ID = G.in[0], IH = G.in[1], IW = G.in[2];
  const int64_t OD = G.out[0], OH = G.out[1], OW = G.out[2];
  const int64_t KD = G.k[0], KH = G.k[1], KW = G.k[2], khw = s.khw;
  const int64_t C = G.C, Cg = s.Cg, Ng = s.Ng, Cout = s.Cout, groups = s.groups;
  const int64_t cb = s.channel_block(), nblk = Ng / cb, run = khw * cb;  // a block's columns
  const int64_t cols = s.cols(), panels = cpu::gemm_panels(cols);
  const int64_t ob = cpu::gemm_out_bytes(base.out_kind);
  const int64_t mr = k.mr();
  const int64_t outer = G.N * groups * OD;
  const int nt = at::get_num_threads();
  const int64_t work = G.N * ID * IH * IW * C * Ng * G.taps();
  const bool serial = nt <= 1 || work < kSerialWork;
  // Output rows per task: an int32 tile of kAccBytes, at least one row; a multiple of the stride
  // where it can be, so that a band starts where an input row's taps start (no input row is
  // then shared by two bands when the kernel is no larger than the stride).
  const int64_t sh = G.stride[1];
  int64_t band = std::max<int64_t>(1, std::min<int64_t>(OH, kAccBytes / std::max<int64_t>(1, OW * Ng * 4)));
  if (band < OH && band >= sh) band = band / sh * sh;
  // Too few tasks to keep every thread busy (batch 1, small images): split the output channels
  // first (free: each task computes other columns), then the bands (recomputing the input rows
  // two bands share).
  int64_t csplit = 1;
  if (!serial && outer * ceil_div(OH, band) < 2 * nt) {
    csplit = std::min(nblk, ceil_div(2 * nt, outer * ceil_div(OH, band)));
    if (outer * csplit * ceil_div(OH, band) < 2 * nt) {
      const int64_t want = ceil_div(2 * nt, std::max<int64_t>(outer * csplit, 1));
      band = std::max<int64_t>(1, std::min(band, ceil_div(OH, want)));
    }
  }
  const int64_t nbands = ceil_div(OH, band);
  const int64_t tasks = outer * csplit * nbands;
  // A GEMM chunk: up to kMaxColPanels panels of columns, rows to fill kColBytes.
  const int64_t pchunk = std::max<int64_t>(1, std::min(panels, kMaxColPanels));
  const int64_t ccols = pchunk * cpu::kPanel;
  int64_t rows = std::min<int64_t>(kMaxChunkRows, kColBytes / (4 * ccols));
  rows = std::max<int64_t>(mr, rows / mr * mr);

  auto body = [&](int64_t t0, int64_t t1) {
    thread_local std::vector<int32_t> acc_buf, col_buf;
    thread_local std::vector<int64_t> dst_buf;
    int64_t* dst_of = cpu::scratch(dst_buf, static_cast<size_t>(khw));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t % nbands;
      int64_t r = t / nbands;
      const int64_t cs_i = r % csplit;
      r /= csplit;
      const int64_t od = r % OD;
      r /= OD;
      const int64_t g = r % groups, n = r / groups;
      const int64_t oh0 = b * band, oh1 = std::min(OH, oh0 + band), T = oh1 - oh0;
      // The task's output channels [ch0, ch0 + tch) of the group: whole blocks, whose columns
      // [c_lo, c_hi) are whole panels unless there is one block only.
      const int64_t jb0 = cs_i * nblk / csplit, jb1 = (cs_i + 1) * nblk / csplit;
      if (jb0 >= jb1) continue;
      const int64_t ch0 = jb0 * cb, tch = (jb1 - jb0) * cb;
      const int64_t c_lo = jb0 * run, c_hi = jb1 * run;
      const int64_t p_lo = c_lo / cpu::kPanel, p_hi = cpu::gemm_panels(c_hi);
      int32_t* acc = cpu::scratch(acc_buf, static_cast<size_t>(T * OW * tch));
      std::memset(acc, 0, static_cast<size_t>(T * OW * tch) * sizeof(int32_t));
      int32_t* col = cpu::scratch(col_buf, static_cast<size_t>(rows * ccols));
      for (int64_t kd = 0; kd < KD && Cg > 0; ++kd) {
        const int64_t td = od + G.pad[0] - kd * G.dil[0];
        if (td < 0 || td % G.stride[0] != 0 || td / G.stride[0] >= ID) continue;
        const int64_t id = td / G.stride[0];
        // The input rows whose taps reach output rows [oh0, oh1).
        const int64_t ih_lo = std::max<int64_t>(0, ceil_div(oh0 + G.pad[1] - (KH - 1) * G.dil[1], sh));
        const int64_t ih_hi = std::min<int64_t>(IH - 1, floor_div(oh1 - 1 + G.pad[1], sh));
        if (ih_lo > ih_hi) continue;
        const int64_t npix = (ih_hi - ih_lo + 1) * IW;
        const uint8_t* a = x + (((n * ID + id) * IH + ih_lo) * IW) * C + g * Cg;
        const int64_t wi = g * KD + kd;
        const int8_t* wk = packed + wi * panels * Cg * cpu::kPanel;
        const int32_t* cs = col_sums + wi * cols;
        for (int64_t m0 = 0; m0 < npix; m0 += rows) {
          const int64_t mrows = std::min(rows, npix - m0);
          for (int64_t pp = p_lo; pp < p_hi; pp += pchunk) {
            const int64_t pe = std::min(p_hi, pp + pchunk);
            const int64_t c0 = pp * cpu::kPanel, c1 = std::min(cols, pe * cpu::kPanel), width = c1 - c0;
            const GemmProblem p = int32_tile(base, mrows, width, Cg, wk + pp * Cg * cpu::kPanel, cs + c0, col);
            k.compute(p, a + m0 * C, C, 0, mrows, 0, pe - pp);
            // col2im: each run of a block's channels (one tap) into its output pixel.
            const int64_t q0 = c0 / cb;
            int64_t ih = ih_lo + m0 / IW, iw = m0 % IW;
            for (int64_t i = 0; i < mrows; ++i) {
              // Where each tap of this input pixel lands in the tile (-1: outside it).
              for (int64_t kh = 0; kh < KH; ++kh) {
                const int64_t oh = ih * sh - G.pad[1] + kh * G.dil[1];
                for (int64_t kw = 0; kw < KW; ++kw) {
                  const int64_t ow = iw * G.stride[2] - G.pad[2] + kw * G.dil[2];
                  dst_of[kh * KW + kw] = oh >= oh0 && oh < oh1 && ow >= 0 && ow < OW
                                             ? ((oh - oh0) * OW + ow) * tch
                                             : -1;
                }
              }
              const int32_t* src = col + i * width;
              int64_t tap = q0 % khw, blk = q0 / khw;
              for (int64_t q = q0; q * cb < c1; ++q) {
                if (dst_of[tap] >= 0) {
                  const int64_t j0 = std::max(c0, q * cb), j1 = std::min(c1, (q + 1) * cb);
                  int32_t* dst = acc + dst_of[tap] + blk * cb - ch0 + (j0 - q * cb);
                  const int32_t* sp = src + (j0 - c0);
                  for (int64_t j = 0; j < j1 - j0; ++j) dst[j] += sp[j];
                }
                if (++tap == khw) {
                  tap = 0;
                  ++blk;
                }
              }
              if (++iw == IW) {
                iw = 0;
                ++ih;
              }
            }
          }
        }
      }
      GemmProblem e = base;
      e.w_scale = base.w_scale + g * Ng + ch0;
      e.bias = base.bias != nullptr ? base.bias + g * Ng + ch0 : nullptr;
      e.out = out + ((((n * OD + od) * OH + oh0) * OW) * Cout + g * Ng + ch0) * ob;
      e.ldo = Cout;
      k.epilogue(e, acc, tch, T * OW, tch);
    }
  };
  if (serial) {
    body(0, tasks);
  } else {
    at::parallel_for(0, tasks, 1, body);
  }
}

cpu::PackedRecord conv_transpose_record(const ConvTransposeSetup& s) {
  return cpu::packed_record(cpu::kConvTransposeRecordTag, s.Cg, s.g.k, s.groups, s.Cout);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pack_conv_transpose_weight_cpu(const at::Tensor& w,
                                                                  int64_t groups) {
  const ConvTransposeSetup s = conv_transpose_weight_setup(w, groups);
  cpu::check_cpu(w, "w");
  const int64_t KD = s.g.k[0], cols = s.cols(), panels = cpu::gemm_panels(cols), Cg = s.Cg;
  // [groups, KD, Ng / cb, kh * kw, cb, Cg]: per (group, depth tap) the [cols, Cg] GEMM operand,
  // columns in (channel block, tap, channel) order.
  const int64_t cb = std::max<int64_t>(1, s.channel_block());
  const at::Tensor wk = w.reshape({groups, Cg, s.Ng / cb, cb, KD, s.khw})
                            .permute({0, 4, 2, 5, 3, 1})
                            .contiguous();
  // 1-D: the panels [groups, KD, panels, Cg, 16], then the record of packed_record.h.
  const int64_t body = groups * KD * panels * Cg * cpu::kPanel;
  at::Tensor packed = at::empty({body + cpu::kRecordBytes}, w.options());
  at::Tensor col_sums = at::empty({groups * KD * cols}, w.options().dtype(at::kInt));
  const int8_t* pw = wk.const_data_ptr<int8_t>();
  int8_t* pp = packed.data_ptr<int8_t>();
  int32_t* pc = col_sums.data_ptr<int32_t>();
  for (int64_t i = 0; i < groups * KD; ++i) {
    cpu::gemm_pack_weight(pw + i * cols * Cg, Cg, 1, cols, Cg, pp + i * panels * Cg * cpu::kPanel,
                          pc + i * cols);
  }
  cpu::write_packed_record(packed, body, conv_transpose_record(s));
  return {packed, col_sums};
}

at::Tensor conv_transpose_int8_cpu(const at::Tensor& x, const at::Tensor& x_scale,
                                   const at::Tensor& x_zero_point, const at::Tensor& w_packed,
                                   const at::Tensor& w_col_sums, const at::Tensor& w_scale,
                                   const std::optional<at::Tensor>& bias,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef output_padding,
                                   at::IntArrayRef dilation, int64_t groups,
                                   const std::optional<at::Tensor>& out_scale,
                                   const std::optional<at::Tensor>& out_zero_point, bool relu,
                                   std::optional<at::ScalarType> out_dtype) {
  const ConvTransposeSetup s = conv_transpose_setup(x, w_col_sums, kernel_size, stride, padding,
                                                    output_padding, dilation, groups);
  cpu::check_cpu(x, "x");
  check_w_packed(x, w_packed, "pack_conv_transpose_weight");
  cpu::check_packed_record(w_packed, groups * s.g.k[0] * cpu::gemm_panels(s.cols()) * s.Cg * cpu::kPanel,
                           conv_transpose_record(s), "pack_conv_transpose_weight",
                           "groups * kD * ceil(kH * kW * Cout/groups / 16) * Cin/groups * 16");
  const bool u = x.scalar_type() == at::kByte;
  GemmProblem p;
  p.a_unsigned = u;
  p.a_scale = cpu::read_scale(x_scale, "x_scale");
  p.a_zp = cpu::read_zero_point(x_zero_point, "x_zero_point", u ? 0 : -128, u ? 255 : 127);
  const at::Tensor ws = cpu::per_channel_float(w_scale, "w_scale", s.Cout);
  check_scale_values(w_scale, ws.const_data_ptr<float>(), s.Cout, "w_scale", "channel");
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = cpu::per_channel_float(*bias, "bias", s.Cout);
  const at::ScalarType odt = cpu::read_gemm_output(p, out_scale, out_zero_point, out_dtype);
  const bool low_float = odt == at::kHalf || odt == at::kBFloat16;
  p.w_scale = ws.const_data_ptr<float>();
  p.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  cpu::set_nan_free(p, s.Cout);
  p.relu = relu;
  at::Tensor out =
      conv_transpose_empty_output(s, x.options().dtype(low_float ? at::kFloat : odt), true);
  if (out.numel() == 0) return low_float ? out.to(odt) : out;
  const at::Tensor xc = conv_channels_last_input(x);
  (reached_once(s) ? run_conv_transpose_once : run_conv_transpose)(
      s, p, static_cast<const uint8_t*>(xc.const_data_ptr()), static_cast<char*>(out.data_ptr()),
      w_packed.const_data_ptr<int8_t>(), w_col_sums.const_data_ptr<int32_t>());
  return low_float ? out.to(odt) : out;
}

TORCH_LIBRARY_IMPL(torchquant, CPU, m) {
  m.impl("pack_conv_transpose_weight", &pack_conv_transpose_weight_cpu);
  m.impl("conv_transpose_int8", &conv_transpose_int8_cpu);
}

}  // namespace torchquant
