// CPU adapters of the int8 GEMM ops: argument checks, layout, the task grid over threads and
// the choice of kernel variant. The kernels are raw-pointer code in gemm_scalar.cpp,
// gemm_avx2.cpp and gemm_avx512.cpp; the packed weight layout is described in gemm_kernels.h
// and the requantize contract in docs/quantization.md ("Requantization").
//
// Per-call cost matters at small sizes (a 64 x 256 x 10 layer is a few microseconds of
// arithmetic), so the common path allocates only the output: qparams are read straight from
// their tensors, float32 contiguous arguments are used in place, and scratch buffers are
// thread-local and reused.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common/checks.h"
#include "cpu/alloc.h"
#include "cpu/gemm_args.h"
#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"
#include "ops.h"

namespace torchquant {
namespace cpu {

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "argument '", name, "' must be on the CPU, got ", t.device());
}

// Checks that a qparam argument is a CPU tensor of the right kind; its size is the caller's.
void check_qparam(const at::Tensor& t, const char* name, bool floating) {
  TORCH_CHECK(t.defined(), "argument '", name, "' must be a tensor, got None");
  check_cpu(t, name);
  if (floating) {
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), "argument '", name,
                "' must be a floating-point tensor, got dtype ", t.scalar_type());
  } else {
    TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), "argument '", name,
                "' must be an integer tensor, got dtype ", t.scalar_type());
  }
}

float read_scale(const at::Tensor& t, const char* name) {
  check_qparam(t, name, /*floating=*/true);
  TORCH_CHECK(t.numel() == 1, "argument '", name, "' must have one element (per tensor), got ",
              t.numel());
  const float v = t.scalar_type() == at::kFloat ? *t.const_data_ptr<float>()
                                                : static_cast<float>(t.item<double>());
  check_scale_values(t, &v, 1, name, nullptr);
  return v;
}

int32_t read_zero_point(const at::Tensor& t, const char* name, int64_t lo, int64_t hi) {
  check_qparam(t, name, /*floating=*/false);
  TORCH_CHECK(t.numel() == 1, "argument '", name, "' must have one element (per tensor), got ",
              t.numel());
  const int64_t v = t.scalar_type() == at::kInt ? int64_t{*t.const_data_ptr<int32_t>()}
                                                : t.item<int64_t>();
  TORCH_CHECK(v >= lo && v <= hi, "argument '", name, "' must lie in [", lo, ", ", hi, "], got ", v);
  return static_cast<int32_t>(v);
}

at::Tensor per_channel_float(const at::Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK(t.defined(), "argument '", name, "' must be a tensor, got None");
  check_cpu(t, name);
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "argument '", name,
              "' must be a floating-point tensor, got dtype ", t.scalar_type());
  TORCH_CHECK(t.numel() == n, "argument '", name, "' must have ", n,
              " elements (one per output channel), got ", t.numel());
  if (t.scalar_type() == at::kFloat && t.is_contiguous()) return t;
  return t.to(at::kFloat).contiguous();
}

at::ScalarType read_gemm_output(GemmProblem& p, const std::optional<at::Tensor>& out_scale,
                                const std::optional<at::Tensor>& out_zero_point,
                                std::optional<at::ScalarType> out_dtype) {
  const at::ScalarType odt = out_dtype.value_or(at::kFloat);
  TORCH_CHECK(odt == at::kFloat || odt == at::kHalf || odt == at::kBFloat16 || odt == at::kChar ||
                  odt == at::kByte,
              "argument 'out_dtype' must be torch.float32, torch.bfloat16, torch.float16, torch.int8 "
              "or torch.uint8, got ", odt);
  p.out_kind = odt == at::kChar ? GemmOut::QInt8 : odt == at::kByte ? GemmOut::QUInt8 : GemmOut::Float;
  if (p.out_kind != GemmOut::Float) {
    TORCH_CHECK(out_scale.has_value() && out_scale->defined(),
                "argument 'out_scale' is required when out_dtype is ", odt);
    TORCH_CHECK(out_zero_point.has_value() && out_zero_point->defined(),
                "argument 'out_zero_point' is required when out_dtype is ", odt);
    p.out_inv_scale = 1.0f / read_scale(*out_scale, "out_scale");
    p.out_zp = read_zero_point(*out_zero_point, "out_zero_point", odt == at::kByte ? 0 : -128,
                               odt == at::kByte ? 255 : 127);
  }
  return odt;
}

void set_nan_free(GemmProblem& p, int64_t n) {
  p.nan_free = p.out_kind != GemmOut::Float && std::isfinite(p.out_inv_scale);
  // A zero correction times a scale product a_scale * w_scale that overflows float32 (each
  // factor finite: 1e30 * 1e10) is NaN. The products grow with both factors: the largest
  // activation scale times the largest weight scale bounds them all.
  if (p.nan_free && p.w_scale != nullptr) {
    float wmax = 0.0f, amax = p.a_scale;
    for (int64_t i = 0; i < n; ++i) wmax = p.w_scale[i] > wmax ? p.w_scale[i] : wmax;
    if (p.a_scale_row != nullptr) {
      amax = 0.0f;
      for (int64_t m = 0; m < p.M; ++m) amax = p.a_scale_row[m] > amax ? p.a_scale_row[m] : amax;
    }
    p.nan_free = std::isfinite(amax * wmax);
  }
  if (p.nan_free && p.bias != nullptr) {
    for (int64_t i = 0; i < n && p.nan_free; ++i) p.nan_free = std::isfinite(p.bias[i]);
  }
}

}  // namespace cpu

namespace {

using cpu::GemmOut;
using cpu::GemmProblem;
using cpu::check_cpu;
using cpu::check_qparam;
using cpu::per_channel_float;
using cpu::read_scale;
using cpu::read_zero_point;

struct GemmKernels {
  decltype(&cpu::gemm_mr__scalar) mr;
  decltype(&cpu::gemm_task_panels__scalar) task_panels;
  decltype(&cpu::gemm_compute__scalar) compute;
  decltype(&cpu::quantize_rows__scalar) quantize_rows;
};

const GemmKernels& gemm_kernels() {
  static const GemmKernels scalar{cpu::gemm_mr__scalar, cpu::gemm_task_panels__scalar,
                                  cpu::gemm_compute__scalar, cpu::quantize_rows__scalar};
  static const GemmKernels avx2{cpu::gemm_mr__avx2, cpu::gemm_task_panels__avx2,
                                cpu::gemm_compute__avx2, cpu::quantize_rows__avx2};
  static const GemmKernels avxvnni{cpu::gemm_mr__avx2, cpu::gemm_task_panels__avx2,
                                   cpu::gemm_compute__avxvnni, cpu::quantize_rows__avx2};
  static const GemmKernels vnni{cpu::gemm_mr__avx512vnni, cpu::gemm_task_panels__avx512vnni,
                                cpu::gemm_compute__avx512vnni, cpu::quantize_rows__avx512vnni};
  static const GemmKernels amx{cpu::gemm_mr__amx, cpu::gemm_task_panels__amx,
                               cpu::gemm_compute__amx, cpu::quantize_rows__avx512vnni};
  switch (cpu_isa()) {
    case CpuIsa::Amx: return amx;
    case CpuIsa::Avx512Vnni: return vnni;
    case CpuIsa::AvxVnni: return avxvnni;
    case CpuIsa::Avx2: return avx2;
    default: return scalar;
  }
}

// Below this many multiply-adds a thread wake-up costs more than it saves. 2^19: a recurrent
// step's 4H x H GEMV at H = 512 (2^20, 1 MiB of weights from cache) ran serial under 2^21 and
// took 12.5 us on one thread or two; split, 8.3 us on two (AMD Zen 5), and the tutorial LSTM at
// batch 1 went from 1.03-1.08x to 1.47-1.49x torch.ao's.
constexpr int64_t kSerialWork = int64_t{1} << 19;

// Splits the output into tasks of (row block, panel block) and runs them with at::parallel_for.
// Panel blocks come first: a thread's consecutive tasks share one weight slice, and for one or
// few rows (decode-style calls) threads read disjoint weights. Row blocks are added only
// until there are a few tasks per thread.
void run_gemm(const GemmProblem& p, const void* a, int64_t lda) {
  if (p.M == 0 || p.N == 0) return;
  const GemmKernels& k = gemm_kernels();
  const int64_t panels = cpu::gemm_panels(p.N);
  const int nt = at::get_num_threads();
  const int64_t work = p.M * p.N * std::max<int64_t>(p.K, 16);
  if (nt <= 1 || work < kSerialWork) {
    k.compute(p, a, lda, 0, p.M, 0, panels);
    return;
  }
  const int64_t mr = k.mr(), nb = k.task_panels();
  const int64_t tiles = (p.M + mr - 1) / mr, n_blocks = (panels + nb - 1) / nb;
  int64_t m_blocks = 1;
  if (n_blocks < 4 * nt) m_blocks = std::min<int64_t>(tiles, (4 * nt + n_blocks - 1) / n_blocks);
  at::parallel_for(0, n_blocks * m_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t nbk = t / m_blocks, mbk = t % m_blocks;
      const int64_t m0 = mbk * tiles / m_blocks * mr;
      const int64_t m1 = std::min(p.M, (mbk + 1) * tiles / m_blocks * mr);
      const int64_t p0 = nbk * nb, p1 = std::min(panels, p0 + nb);
      if (m0 < m1) k.compute(p, a, lda, m0, m1, p0, p1);
    }
  });
}

// int8_mm without packing b (VNNI, b with unit stride along N): b is interleaved into
// vpdpbusd's operand order a chunk of rows of a run of 64-column blocks at a time, into an
// L2-sized buffer (in registers, block by block, for M <= 4), and every row of the task passes
// over it. Packing the whole of b into the weight
// layout on every call cost a write and a re-read of all of b: at M = 256, K = N = 4096 that was
// a sixth of the call, and at M = 1 three times the product itself. The flip to uint8 is on b's
// side, so the inner loop broadcasts a as it is, with one correction per row at the end.

// Splits out into tasks: column ranges (whole 64-column blocks) when there are enough and b is
// at least as wide as a is tall, so that threads read disjoint parts of b; else row ranges
// (whole 4-row tiles up to 64 rows, 12-row ones beyond), where each task interleaves all of b for
// itself but sums and reads only its own rows of a.
// b = w.t() (unit stride along K) takes the same path with `kernel` =
// gemm_mm_direct_nk__avx512vnni and b, ldb = w, w's row stride.
void mm_direct(const int8_t* a, int64_t lda, int64_t M, const int8_t* b, int64_t ldb, int64_t N,
               int64_t K, int32_t* out,
               decltype(&cpu::gemm_mm_direct__avx512vnni) kernel = cpu::gemm_mm_direct__avx512vnni) {
  const int64_t nt = at::get_num_threads();
  if (nt <= 1 || M * N * K < kSerialWork) {
    kernel(a, lda, M, b, ldb, K, 0, N, out, N);
    return;
  }
  const int64_t cblocks = (N + 63) / 64;
  if (cblocks >= nt && N >= M) {
    at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = t * cblocks / nt * 64, c1 = std::min(N, (t + 1) * cblocks / nt * 64);
        kernel(a, lda, M, b, ldb, K, c0, c1, out, N);
      }
    });
    return;
  }
  const int64_t tile = M <= 64 ? 4 : 12, tiles = (M + tile - 1) / tile;
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = t * tiles / nt * tile, m1 = std::min(M, (t + 1) * tiles / nt * tile);
      if (m0 < m1) {
        kernel(a + m0 * lda, lda, m1 - m0, b, ldb, K, 0, N, out + m0 * N, N);
      }
    }
  });
}

// The packer from rows with unit stride along K for the ISA in use; null for scalar, whose
// generic packer reads such rows contiguously anyway.
decltype(&cpu::gemm_pack_weight_nk__avx2) nk_packer() {
  switch (cpu_isa()) {
    case CpuIsa::Amx:
    case CpuIsa::Avx512Vnni: return cpu::gemm_pack_weight_nk__avx512vnni;
    case CpuIsa::Avx2:
    case CpuIsa::AvxVnni: return cpu::gemm_pack_weight_nk__avx2;
    default: return nullptr;
  }
}

// int8_mm with b = w.t() and few rows of a (VNNI): dot products straight from w's rows, the
// columns split over threads in blocks of 16 channels so that each thread reads its own rows.
// Up to this many rows of a; beyond, packing w's panels (whose cost is shared by all rows)
// and the register-tiled kernel are faster.
constexpr int64_t kDotMaxM = 4;

void mm_nk(const int8_t* a, int64_t lda, int64_t M, const int8_t* w, int64_t ldw, int64_t N,
           int64_t K, int32_t* out) {
  const int64_t nt = at::get_num_threads(), blocks = (N + 15) / 16;
  if (nt <= 1 || M * N * K < kSerialWork || blocks < 2) {
    cpu::gemm_mm_nk__avx512vnni(a, lda, M, w, ldw, K, 0, N, out, N);
    return;
  }
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = t * blocks / nt * 16, c1 = std::min(N, (t + 1) * blocks / nt * 16);
      if (c0 < c1) cpu::gemm_mm_nk__avx512vnni(a, lda, M, w, ldw, K, c0, c1, out, N);
    }
  });
}



// A one-element floating tensor on the CPU, > 0 and finite.

// A one-element integer tensor on the CPU inside [lo, hi].

// The activations' qparams, per tensor (one element) or per row (one per row of x, any shape):
// the contract of the CUDA implementation. Per-row values are checked here like per-tensor
// ones, and are read in place when already float32 / int32 and contiguous.
struct ActQParams {
  at::Tensor scale_rows, zp_rows;  // defined when per row (they own any converted copy)
};

void check_qparam_count(const at::Tensor& t, const char* name, int64_t rows) {
  TORCH_CHECK(t.numel() == 1 || t.numel() == rows, "argument '", name,
              "' must have 1 element (per tensor) or ", rows, " (per row), got ", t.numel());
}

ActQParams read_act_qparams(const at::Tensor& scale, const at::Tensor& zp, int64_t rows,
                            int64_t lo, int64_t hi, GemmProblem* p) {
  ActQParams q;
  check_qparam(scale, "x_scale", /*floating=*/true);
  check_qparam_count(scale, "x_scale", rows);
  check_qparam(zp, "x_zero_point", /*floating=*/false);
  check_qparam_count(zp, "x_zero_point", rows);
  if (scale.numel() == 1) {
    p->a_scale = read_scale(scale, "x_scale");
  } else {
    q.scale_rows = scale.scalar_type() == at::kFloat && scale.is_contiguous()
                       ? scale
                       : scale.to(at::kFloat).contiguous();
    const float* ps = q.scale_rows.const_data_ptr<float>();
    check_scale_values(scale, ps, rows, "x_scale", "row");
    p->a_scale_row = ps;
  }
  if (zp.numel() == 1) {
    p->a_zp = read_zero_point(zp, "x_zero_point", lo, hi);
  } else {
    // Range checked before any narrowing to int32, which could wrap an out-of-range value in.
    const bool in_place = zp.scalar_type() == at::kInt && zp.is_contiguous();
    const at::Tensor wide = in_place ? zp : zp.to(at::kLong).contiguous();
    const int32_t* p32 = in_place ? wide.const_data_ptr<int32_t>() : nullptr;
    const int64_t* p64 = in_place ? nullptr : wide.const_data_ptr<int64_t>();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t v = in_place ? int64_t{p32[r]} : p64[r];
      TORCH_CHECK(v >= lo && v <= hi, "argument 'x_zero_point' must lie in [", lo, ", ", hi,
                  "], got ", v, " at row ", r);
    }
    q.zp_rows = in_place ? zp : wide.to(at::kInt);
    p->a_zp_row = q.zp_rows.const_data_ptr<int32_t>();
  }
  return q;
}

// float32 contiguous [n] view of a per-channel float argument (a copy only when it is not one).

// The weight's per-channel scales as float32 [N], each > 0 and finite.
at::Tensor checked_w_scale(const at::Tensor& w_scale, int64_t N) {
  TORCH_CHECK(!w_scale.defined() || w_scale.numel() == N, "argument 'w_scale' has ", w_scale.numel(),
              " elements but 'w_col_sums' has ", N, " (one of each per output channel)");
  at::Tensor ws = per_channel_float(w_scale, "w_scale", N);
  check_scale_values(w_scale, ws.const_data_ptr<float>(), N, "w_scale", "channel");
  return ws;
}

// Checks w_packed / w_col_sums against each other and against the activations' K; returns N.
int64_t check_packed_weight(const at::Tensor& x, const at::Tensor& w_packed,
                            const at::Tensor& w_col_sums, int64_t K) {
  TORCH_CHECK(w_packed.defined(), "argument 'w_packed' must be a tensor, got None");
  TORCH_CHECK(w_col_sums.defined(), "argument 'w_col_sums' must be a tensor, got None");
  check_same_device(x, "x", w_packed, "w_packed");
  check_same_device(x, "x", w_col_sums, "w_col_sums");
  TORCH_CHECK(w_col_sums.scalar_type() == at::kInt && w_col_sums.dim() == 1 &&
                  w_col_sums.is_contiguous(),
              "argument 'w_col_sums' must be a contiguous 1-D int32 tensor (from pack_weight), "
              "got dtype ", w_col_sums.scalar_type(), " and shape ", w_col_sums.sizes());
  const int64_t N = w_col_sums.size(0);
  TORCH_CHECK(w_packed.scalar_type() == at::kChar && w_packed.dim() == 3 &&
                  w_packed.size(2) == cpu::kPanel && w_packed.is_contiguous(),
              "argument 'w_packed' must be a contiguous int8 tensor of shape [ceil(N/16), K, 16] "
              "from pack_weight on the CPU, got dtype ", w_packed.scalar_type(), " and shape ",
              w_packed.sizes());
  TORCH_CHECK(w_packed.size(1) == K, "argument 'w_packed' was packed for K = ", w_packed.size(1),
              " but 'x' has K = ", K, " (its last dimension)");
  TORCH_CHECK(w_packed.size(0) == cpu::gemm_panels(N), "argument 'w_col_sums' has ", N,
              " elements (one per output channel) but 'w_packed' holds ", w_packed.size(0),
              " panels of ", cpu::kPanel, " channels, packed for ", std::max<int64_t>(0, (w_packed.size(0) - 1) * cpu::kPanel + 1),
              " to ", w_packed.size(0) * cpu::kPanel, " output channels");
  return N;
}

// The activations as rows with unit stride along K: in place when they already are.
at::Tensor as_rows(const at::Tensor& x, int64_t K, int64_t* lda) {
  if (x.dim() == 2 && x.stride(1) == 1 && x.stride(0) >= K) {
    *lda = x.stride(0);
    return x;
  }
  *lda = K;
  return x.contiguous();
}

int64_t leading_rows(const at::Tensor& x) {
  int64_t m = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) m *= x.size(d);
  return m;
}

std::vector<int64_t> out_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = N;
  return s;
}

}  // namespace

at::Tensor int8_mm_cpu(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.defined() && b.defined(), "arguments 'a' and 'b' must be tensors");
  TORCH_CHECK(a.scalar_type() == at::kChar, "argument 'a' must be an int8 tensor, got dtype ",
              a.scalar_type());
  TORCH_CHECK(b.scalar_type() == at::kChar, "argument 'b' must be an int8 tensor, got dtype ",
              b.scalar_type());
  TORCH_CHECK(a.dim() == 2, "argument 'a' must be 2-D [M, K], got shape ", a.sizes());
  TORCH_CHECK(b.dim() == 2, "argument 'b' must be 2-D [K, N], got shape ", b.sizes());
  check_same_device(a, "a", b, "b");
  TORCH_CHECK(a.size(1) == b.size(0), "arguments 'a' and 'b' cannot be multiplied: a is ",
              a.sizes(), " and b is ", b.sizes(), " (a.size(1) must equal b.size(0))");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  check_k_bound(K, "a");
  at::Tensor out = cpu::empty_output({M, N}, a.options().dtype(at::kInt));
  if (M == 0 || N == 0) return out;
  if (K == 0) return out.zero_();
  int64_t lda = 0;
  const at::Tensor ac = as_rows(a, K, &lda);
  // AMX: with 32 rows of a or more, K of 256 or more and a block of 128 columns of b for each
  // thread, b is packed per task (as below) and multiplied on tiles: at M = 256, K = N = 4096
  // that took 3.1-4.1 ms against the direct VNNI paths' 7.2-7.5 ms (2 threads, an AMX Xeon).
  // Shallower K lost to the packing (K = 64: 1.6-1.8x slower), and the tasks split only columns.
  const bool amx_pack = cpu_isa() == CpuIsa::Amx && M >= 32 && K >= 256 && K % 4 == 0 &&
                        (cpu::gemm_panels(N) + 7) / 8 >= at::get_num_threads();
  if (b.stride(1) == 1 && is_avx512_class(cpu_isa()) && !amx_pack) {
    mm_direct(ac.const_data_ptr<int8_t>(), lda, M, b.const_data_ptr<int8_t>(), b.stride(0), N, K,
              out.data_ptr<int32_t>());
    return out;
  }
  // b = w.t() of a row-major w [N, K] (unit stride along K; torch._int_mm's usual call): read
  // as w's rows, by dot products for few rows of a, else through the same buffered path.
  if (b.stride(0) == 1 && is_avx512_class(cpu_isa()) && !amx_pack) {
    if (M <= kDotMaxM) {
      mm_nk(ac.const_data_ptr<int8_t>(), lda, M, b.const_data_ptr<int8_t>(), b.stride(1), N, K,
            out.data_ptr<int32_t>());
    } else {
      mm_direct(ac.const_data_ptr<int8_t>(), lda, M, b.const_data_ptr<int8_t>(), b.stride(1), N, K,
                out.data_ptr<int32_t>(), cpu::gemm_mm_direct_nk__avx512vnni);
    }
    return out;
  }
  // b changes from call to call, so it is packed here: each task packs the panels it owns into
  // thread-local scratch (L2-sized for K = 4096) and multiplies them with every row right away,
  // so b is read from memory once and the packed copy never leaves the cache. A b with unit
  // stride along K (b = w.t() of a row-major weight w [N, K], as torch._int_mm is usually
  // called) already holds each channel's K values together, as the panels do: its packer only
  // transposes 4-byte groups in registers.
  const int8_t* pb = b.const_data_ptr<int8_t>();
  const int64_t sb_k = b.stride(0), sb_n = b.stride(1);
  const bool fast = sb_n == 1 && cpu_isa() != CpuIsa::Scalar;
  const auto pack_nk = nk_packer();
  const bool by_rows = !fast && sb_k == 1 && pack_nk != nullptr;
  const GemmKernels& k = gemm_kernels();
  // At least 8 panels (128 bytes of each row of b) per task: every row of b is its own page, and
  // two lines per page visit halve the page walks of the packing.
  const int64_t panels = cpu::gemm_panels(N), nb = std::max<int64_t>(k.task_panels(), 8);
  const int64_t n_blocks = (panels + nb - 1) / nb;
  int32_t* po = out.data_ptr<int32_t>();
  const void* pa = ac.const_data_ptr();
  auto block = [&](int64_t nbk) {
    thread_local std::vector<int8_t> packed;
    thread_local std::vector<int32_t> col_sums;
    const int64_t n0 = nbk * nb * cpu::kPanel, nn = std::min(N - n0, nb * cpu::kPanel);
    const int64_t np = cpu::gemm_panels(nn);
    cpu::scratch(packed, static_cast<size_t>(np * K * cpu::kPanel));
    cpu::scratch(col_sums, static_cast<size_t>(nn));
    if (fast) {
      cpu::gemm_pack_weight_kn__avx2(pb + n0, sb_k, nn, K, 0, np, packed.data(), col_sums.data());
    } else if (by_rows) {
      pack_nk(pb + n0 * sb_n, sb_n, nn, K, 0, np, packed.data(), col_sums.data());
    } else {
      cpu::gemm_pack_weight(pb + n0 * sb_n, sb_n, sb_k, nn, K, packed.data(), col_sums.data());
    }
    GemmProblem p;
    p.M = M;
    p.N = nn;
    p.K = K;
    p.w = packed.data();
    p.col_sums = col_sums.data();
    p.out_kind = GemmOut::Int32;
    p.out = po + n0;
    p.ldo = N;
    k.compute(p, pa, lda, 0, M, 0, np);
  };
  if (at::get_num_threads() <= 1 || M * N * K < kSerialWork) {
    for (int64_t nbk = 0; nbk < n_blocks; ++nbk) block(nbk);
  } else {
    at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t nbk = b0; nbk < b1; ++nbk) block(nbk);
    });
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> pack_weight_cpu(const at::Tensor& w) {
  TORCH_CHECK(w.defined(), "argument 'w' must be a tensor, got None");
  TORCH_CHECK(w.scalar_type() == at::kChar, "argument 'w' must be an int8 tensor, got dtype ",
              w.scalar_type());
  TORCH_CHECK(w.dim() == 2, "argument 'w' must be 2-D [N, K] (nn.Linear layout), got shape ",
              w.sizes());
  const int64_t N = w.size(0), K = w.size(1);
  check_k_bound(K, "w");
  at::Tensor packed = at::empty({cpu::gemm_panels(N), K, cpu::kPanel}, w.options());
  at::Tensor col_sums = at::empty({N}, w.options().dtype(at::kInt));
  const auto pack_nk = nk_packer();
  if (w.stride(1) == 1 && pack_nk != nullptr && N > 0 && K > 0) {
    pack_nk(w.const_data_ptr<int8_t>(), w.stride(0), N, K, 0, cpu::gemm_panels(N),
            packed.data_ptr<int8_t>(), col_sums.data_ptr<int32_t>());
  } else {
    cpu::gemm_pack_weight(w.const_data_ptr<int8_t>(), w.stride(0), w.stride(1), N, K,
                          packed.data_ptr<int8_t>(), col_sums.data_ptr<int32_t>());
  }
  return {packed, col_sums};
}

at::Tensor linear_int8_cpu(const at::Tensor& x, const at::Tensor& x_scale,
                           const at::Tensor& x_zero_point, const at::Tensor& w_packed,
                           const at::Tensor& w_col_sums, const at::Tensor& w_scale,
                           const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& out_scale,
                           const std::optional<at::Tensor>& out_zero_point, bool relu,
                           std::optional<at::ScalarType> out_dtype) {
  check_int8_input(x, "x");
  TORCH_CHECK(x.dim() >= 1, "argument 'x' must have at least 1 dimension [..., K], got a scalar");
  const int64_t K = x.size(-1);
  check_k_bound(K, "x");
  const int64_t N = check_packed_weight(x, w_packed, w_col_sums, K);
  const bool u = x.scalar_type() == at::kByte;
  GemmProblem p;
  p.a_unsigned = u;
  p.M = leading_rows(x);
  const ActQParams aq =
      read_act_qparams(x_scale, x_zero_point, p.M, u ? 0 : -128, u ? 255 : 127, &p);
  const at::Tensor ws = checked_w_scale(w_scale, N);
  const float* pws = ws.const_data_ptr<float>();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = per_channel_float(*bias, "bias", N);
  const at::ScalarType odt = cpu::read_gemm_output(p, out_scale, out_zero_point, out_dtype);
  const bool low_float = odt == at::kHalf || odt == at::kBFloat16;
  // bfloat16 / float16: the float32 result rounded to nearest even, as the CUDA epilogue does.
  at::Tensor out = cpu::empty_output(out_shape(x, N), x.options().dtype(low_float ? at::kFloat : odt));
  p.N = N;
  p.K = K;
  p.w = w_packed.const_data_ptr<int8_t>();
  p.col_sums = w_col_sums.const_data_ptr<int32_t>();
  p.w_scale = pws;
  p.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  cpu::set_nan_free(p, N);
  p.relu = relu;
  p.out = out.data_ptr();
  p.ldo = N;
  if (p.M == 0 || N == 0) return low_float ? out.to(odt) : out;
  int64_t lda = 0;
  const at::Tensor xc = as_rows(x.dim() == 1 ? x.unsqueeze(0) : x, K, &lda);
  run_gemm(p, xc.const_data_ptr(), lda);
  return low_float ? out.to(odt) : out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rowwise_cpu(const at::Tensor& x,
                                                                    int64_t qmin, int64_t qmax) {
  check_float_input(x, "x");
  TORCH_CHECK(x.dim() >= 1, "argument 'x' must have at least 1 dimension [..., K], got a scalar");
  check_qrange(qmin, qmax, at::kChar);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t K = x.size(-1), rows = leading_rows(x);
  at::Tensor q = cpu::empty_output(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor zp = at::empty({rows}, x.options().dtype(at::kInt));
  const auto fn = gemm_kernels().quantize_rows;
  const float* px = xf.const_data_ptr<float>();
  int8_t* pq = q.data_ptr<int8_t>();
  float* ps = scale.data_ptr<float>();
  int32_t* pz = zp.data_ptr<int32_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(K, 1));
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
    fn(px + b * K, K, e - b, K, static_cast<int32_t>(qmin), static_cast<int32_t>(qmax),
       pq + b * K, K, ps + b, pz + b);
  });
  return {q, scale, zp};
}

at::Tensor linear_dynamic_cpu(const at::Tensor& x, const at::Tensor& w_packed,
                              const at::Tensor& w_col_sums, const at::Tensor& w_scale,
                              const std::optional<at::Tensor>& bias, bool relu, bool reduce_range) {
  check_float_input(x, "x");
  TORCH_CHECK(x.dim() >= 1, "argument 'x' must have at least 1 dimension [..., K], got a scalar");
  const int64_t K = x.size(-1);
  check_k_bound(K, "x");
  const int64_t N = check_packed_weight(x, w_packed, w_col_sums, K);
  const at::Tensor ws = checked_w_scale(w_scale, N);
  const float* pws = ws.const_data_ptr<float>();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = per_channel_float(*bias, "bias", N);
  at::Tensor out = cpu::empty_output(out_shape(x, N), x.options().dtype(at::kFloat));
  const int64_t M = leading_rows(x);
  if (M == 0 || N == 0) return out;
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  // Row qparams and quantized rows live in scratch owned by this thread and reused across calls
  // (a huge batch's rows in a buffer of the call's own).
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> scale;
  thread_local std::vector<int32_t> zp;
  const cpu::CallScratch<int8_t> q_call(q, static_cast<size_t>(M * K));
  const cpu::CallScratch<float> scale_call(scale, static_cast<size_t>(M));
  const cpu::CallScratch<int32_t> zp_call(zp, static_cast<size_t>(M));
  const GemmKernels& k = gemm_kernels();
  const float* px = xf.const_data_ptr<float>();
  int8_t* pq = q_call.data();
  float* ps = scale_call.data();
  int32_t* pz = zp_call.data();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(K, 1));
  // 7-bit rows: codes in [0, 127], the same bytes as int8 or uint8, read as uint8 (the AVX2
  // kernel's exact vpmaddubsw loop takes tiles of them; VNNI needs no flip of the top bit).
  const int32_t qmin = reduce_range ? 0 : -128;
  at::parallel_for(0, M, grain, [&](int64_t b0, int64_t e0) {
    k.quantize_rows(px + b0 * K, K, e0 - b0, K, qmin, 127, pq + b0 * K, K, ps + b0, pz + b0);
  });
  GemmProblem p;
  p.a_unsigned = reduce_range;
  p.M = M;
  p.N = N;
  p.K = K;
  p.w = w_packed.const_data_ptr<int8_t>();
  p.col_sums = w_col_sums.const_data_ptr<int32_t>();
  p.a_scale_row = ps;
  p.a_zp_row = pz;
  p.w_scale = pws;
  p.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  p.relu = relu;
  p.out_kind = GemmOut::Float;
  p.out = out.data_ptr();
  p.ldo = N;
  run_gemm(p, pq, K);
  return out;
}

TORCH_LIBRARY_IMPL(torchquant, CPU, m) {
  m.impl("int8_mm", &int8_mm_cpu);
  m.impl("pack_weight", &pack_weight_cpu);
  m.impl("linear_int8", &linear_int8_cpu);
  m.impl("quantize_rowwise", &quantize_rowwise_cpu);
  m.impl("linear_dynamic", &linear_dynamic_cpu);
}

}  // namespace torchquant
