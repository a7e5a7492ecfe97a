// CUDA int8 GEMM ops: int8_mm, pack_weight, linear_int8, quantize_rowwise, linear_dynamic.
//
// Packed weight layout on CUDA (what pack_weight returns for a CUDA weight): int8 [N, Kp],
// row-major, Kp = round_up(K, 16), columns [K, Kp) zero. It is nn.Linear's layout padded so
// that every row starts 16-byte aligned: the 16-byte loads of the own kernels and the IMMA
// requirements of cuBLASLt (leading dimension a multiple of 4/16) hold for any K.
//
// Paths (docs/cuda.md, path_for below): small M: gemv.cu's dp4a GEMV or tensor-core kernel
// (epilogue fused); larger M: cuBLASLt IMMA into an int32 buffer, then the epilogue kernel
// below; where cuBLASLt has no algorithm, the tiled kernel below (epilogue fused). Every path
// computes the same exact int32 sums and runs the same epilogue function, so the outputs are
// bit-identical whichever runs. TORCHQUANT_CUDA_GEMM=auto|gemv|mma|lt|tiled forces a path
// (for tests and benchmarks).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cstdlib>
#include <cstring>

#include "common/checks.h"
#include "common/quant_math.h"
#include "cuda/common.cuh"
#include "cuda/args.h"
#include "cuda/gemm.cuh"
#include "ops.h"

namespace torchquant {
namespace cuda {
namespace {

// ------------------------------------------------------------------ tiled fallback kernel
// 64 x 64 outputs per block of 256 threads, K in steps of 64 bytes staged in shared memory,
// __dp4a on 4-byte words. Rows are padded to 17 words so that the 16 rows a half-warp reads in
// one step fall in 16 different banks. Out-of-range rows and K columns load as zero.
constexpr int kTile = 64;
constexpr int kTileK = 64;
constexpr int kTileWords = kTileK / 4 + 1;

__global__ void __launch_bounds__(256)
    gemm_tiled_kernel(const int8_t* __restrict__ x, int64_t ldx, const int8_t* __restrict__ w,
                      int64_t ldw, int64_t M, int64_t N, int64_t Kp, Epilogue e) {
  __shared__ int32_t xs[kTile][kTileWords];
  __shared__ int32_t ws[kTile][kTileWords];
  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int lrow = tid / 4, lchunk = tid % 4;  // each thread stages one 16-byte chunk of each
  int32_t acc[4][4] = {};
  for (int64_t k0 = 0; k0 < Kp; k0 += kTileK) {
    const int64_t k = k0 + lchunk * 16;  // Kp % 16 == 0: k < Kp means the whole chunk is in
    int4 xv = make_int4(0, 0, 0, 0), wv = make_int4(0, 0, 0, 0);
    if (m0 + lrow < M && k < Kp) xv = __ldg(reinterpret_cast<const int4*>(x + (m0 + lrow) * ldx + k));
    if (n0 + lrow < N && k < Kp) wv = __ldg(reinterpret_cast<const int4*>(w + (n0 + lrow) * ldw + k));
    xs[lrow][lchunk * 4 + 0] = xv.x;
    xs[lrow][lchunk * 4 + 1] = xv.y;
    xs[lrow][lchunk * 4 + 2] = xv.z;
    xs[lrow][lchunk * 4 + 3] = xv.w;
    ws[lrow][lchunk * 4 + 0] = wv.x;
    ws[lrow][lchunk * 4 + 1] = wv.y;
    ws[lrow][lchunk * 4 + 2] = wv.z;
    ws[lrow][lchunk * 4 + 3] = wv.w;
    __syncthreads();
#pragma unroll
    for (int kw = 0; kw < kTileK / 4; ++kw) {
      int32_t a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = xs[ty + 16 * i][kw];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = ws[tx + 16 * j][kw];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) epilogue_store(e, m, n, acc[i][j]);
    }
  }
}

// ------------------------------------------------------------------ epilogue after cuBLASLt
// D is [M, ldd] int32 with ldd % 4 == 0 (gemm_lt's buffer): each thread takes 4 consecutive
// columns with one 16-byte load; rows come from the grid's y dimension, so no index division;
// columns past N are padding. 1 / out_scale is computed once per thread.
__global__ void __launch_bounds__(kThreads)
    epilogue_kernel(const int32_t* __restrict__ d, int64_t ldd, int64_t M, int64_t N, Epilogue e) {
  const int64_t quads = ldd / 4;
  const float inv = epilogue_inv_out_scale(e);
  for (int64_t m = blockIdx.y; m < M; m += gridDim.y) {
    const int32_t* row = d + m * ldd;
    for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < quads;
         q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t n = q * 4;
      const int4 v = *reinterpret_cast<const int4*>(row + n);
      epilogue_store(e, m, n, v.x, inv);
      if (n + 1 < N) epilogue_store(e, m, n + 1, v.y, inv);
      if (n + 2 < N) epilogue_store(e, m, n + 2, v.z, inv);
      if (n + 3 < N) epilogue_store(e, m, n + 3, v.w, inv);
    }
  }
}

void launch_epilogue(const int32_t* d, int64_t ldd, int64_t M, int64_t N, const Epilogue& e,
                     cudaStream_t stream) {
  // epilogue_kernel stores the first column of every quad unguarded: ldd must be N rounded up.
  TORCH_CHECK(ldd % 4 == 0 && ldd >= N && ldd < N + 4, "internal: epilogue over ldd = ", ldd,
              " for N = ", N);
  const int64_t quads = ldd / 4;
  const int64_t gx = (quads + kThreads - 1) / kThreads;
  // About 8 blocks per SM in all; rows beyond the grid's height loop.
  const int64_t cap = static_cast<int64_t>(grid_for(int64_t{1} << 40));  // sms * 8
  const int64_t gy = std::min<int64_t>(std::min<int64_t>(M, 65535), std::max<int64_t>(1, cap / gx));
  dim3 grid(static_cast<unsigned>(std::min<int64_t>(gx, cap)), static_cast<unsigned>(gy));
  epilogue_kernel<<<grid, kThreads, 0, stream>>>(d, ldd, M, N, e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------------ operand preparation
// dst[r, c] for c < cols: src[r * s0 + c * s1] (flipping the top bit when `flip`: uint8 ->
// int8 x - 128); zero for cols <= c < ld. Each thread writes one aligned 16-byte chunk.
__global__ void __launch_bounds__(kThreads)
    pad_copy_kernel(const uint8_t* __restrict__ src, int64_t s0, int64_t s1, int64_t rows,
                    int64_t cols, bool flip, uint8_t* __restrict__ dst, int64_t ld) {
  const int64_t chunks_per_row = ld / 16;
  const int64_t total = rows * chunks_per_row;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / chunks_per_row, c0 = (i - r * chunks_per_row) * 16;
    Vec<uint8_t, 16> v;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int64_t c = c0 + j;
      const uint8_t b = c < cols ? src[r * s0 + c * s1] : 0;
      v.v[j] = (flip && c < cols) ? static_cast<uint8_t>(b ^ 0x80u) : b;
    }
    store_vec<uint8_t, 16>(dst + r * ld + c0, v);
  }
}

// One block per weight row: the padded copy and the row's sum (the zero-point correction term).
__global__ void __launch_bounds__(kThreads)
    pack_weight_kernel(const int8_t* __restrict__ w, int64_t s0, int64_t s1, int64_t N, int64_t K,
                       int8_t* __restrict__ packed, int64_t ldp, int32_t* __restrict__ col_sums) {
  __shared__ int32_t red[kThreads / 32];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    int32_t sum = 0;
    for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * 16; c0 < ldp; c0 += kThreads * 16) {
      Vec<int8_t, 16> v;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int64_t c = c0 + j;
        v.v[j] = c < K ? w[n * s0 + c * s1] : static_cast<int8_t>(0);
        sum += v.v[j];
      }
      store_vec<int8_t, 16>(packed + n * ldp + c0, v);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      int32_t total = 0;
      for (int i = 0; i < kThreads / 32; ++i) total += red[i];
      col_sums[n] = total;
    }
    __syncthreads();
  }
}

// ------------------------------------------------------------------ per-row quantization
// The dynamic-quantization contract, one block per row:
//   mn = min(min(x_r), 0), mx = max(max(x_r), 0)        (NaN elements are ignored)
//   scale = max((mx - mn) / 255.0f, FLT_EPSILON)
//   zp = clamp(-128 - (int)nearbyint(mn / scale), -128, 127)
//   q = quantize_val(x, 1.0f / scale, zp, -128, 127)
// q rows are written with stride ldq; columns [K, ldq) get zeros (padding for the GEMM).
__global__ void __launch_bounds__(kThreads)
    quantize_rowwise_kernel(const float* __restrict__ x, int64_t rows, int64_t K, int8_t* __restrict__ q,
                            int64_t ldq, float* __restrict__ scale_out,
                            int32_t* __restrict__ zp_out, int32_t qmin, int32_t qmax) {
  __shared__ float smin[kThreads / 32], smax[kThreads / 32];
  __shared__ float s_scale, s_zp;
  const bool vec = (K % 4 == 0) && aligned16(x);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * K;
    float mn = 0.0f, mx = 0.0f;  // the range always holds 0
    if (vec) {
      for (int64_t k = static_cast<int64_t>(threadIdx.x) * 4; k < K; k += kThreads * 4) {
        const float4 v = *reinterpret_cast<const float4*>(xr + k);
        mn = fminf(fminf(mn, v.x), fminf(v.y, fminf(v.z, fminf(v.w, mn))));
        mx = fmaxf(fmaxf(mx, v.x), fmaxf(v.y, fmaxf(v.z, fmaxf(v.w, mx))));
      }
    } else {
      for (int64_t k = threadIdx.x; k < K; k += kThreads) {
        mn = fminf(mn, xr[k]);
        mx = fmaxf(mx, xr[k]);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, off));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    }
    if ((threadIdx.x & 31) == 0) {
      smin[threadIdx.x / 32] = mn;
      smax[threadIdx.x / 32] = mx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int i = 0; i < kThreads / 32; ++i) {
        mn = fminf(mn, smin[i]);
        mx = fmaxf(mx, smax[i]);
      }
      float s = (mx - mn) / static_cast<float>(qmax - qmin);
      s = s > FLT_EPSILON ? s : FLT_EPSILON;  // max(s, eps); an infinite range stays infinite
      // mn / s lies in [-(qmax - qmin), 0] for finite input; clamp before the cast anyway so
      // that an infinite range (mn / s = NaN) stays defined: it counts as 0.
      float t = nearbyintf(mn / s);
      t = t != t ? 0.0f : (t < -65536.0f ? -65536.0f : (t > 65536.0f ? 65536.0f : t));
      int32_t zp = qmin - static_cast<int32_t>(t);
      zp = zp < qmin ? qmin : (zp > qmax ? qmax : zp);
      scale_out[r] = s;
      zp_out[r] = zp;
      s_scale = s;
      s_zp = static_cast<float>(zp);
    }
    __syncthreads();
    const float inv = 1.0f / s_scale, fzp = s_zp;
    const float fmin = static_cast<float>(qmin), fmax = static_cast<float>(qmax);
    int8_t* qr = q + r * ldq;
    for (int64_t k = threadIdx.x; k < ldq; k += kThreads) {
      qr[k] = k < K ? static_cast<int8_t>(static_cast<int32_t>(quantize_val(xr[k], inv, fzp, fmin, fmax)))
                    : static_cast<int8_t>(0);
    }
    __syncthreads();  // s_scale / s_zp are rewritten for the next row
  }
}

// ------------------------------------------------------------------ dispatch
enum class Path { Auto, Gemv, Mma, Lt, Tiled };

Path forced_path() {
  return static_cast<Path>(env_choice("TORCHQUANT_CUDA_GEMM", {"auto", "gemv", "mma", "lt", "tiled"}));
}

// The kernel that runs a problem of M rows. Auto: the dp4a GEMV for M <= kAutoGemvMaxM, the
// tensor-core small-M kernel up to kAutoMmaMaxM (the GEMV below sm_80), cuBLASLt above. A
// forced small-M path applies only where that kernel takes M; larger M goes to cuBLASLt.
constexpr int64_t kAutoGemvMaxM = 1;
// Measured on an H100 (docs/benchmarks.md): up to M = 32 the tensor-core kernel gives the
// shortest time per call seen from Python (less host work per call than cuBLASLt); above, cuBLASLt.
constexpr int64_t kAutoMmaMaxM = 32;
Path path_for(int64_t M) {
  const Path forced = forced_path();
  const bool mma = M <= kMmaMaxM && mma_supported();
  switch (forced) {
    case Path::Tiled:
    case Path::Lt:
      return forced;
    case Path::Gemv:
      return M <= kGemvMaxM ? Path::Gemv : Path::Lt;
    case Path::Mma:
      return mma ? Path::Mma : Path::Lt;
    default:
      if (M <= kAutoGemvMaxM) return Path::Gemv;
      if (M <= kAutoMmaMaxM) return mma ? Path::Mma : Path::Gemv;
      return Path::Lt;
  }
}

// Whether the kernel of `path` reads uint8 activations itself (flipping their top bit).
bool reads_uint8(Path path) { return path == Path::Gemv || path == Path::Mma; }

void launch_tiled_checked(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  TORCH_CHECK(!p.x_xor, "internal: the tiled kernel needs int8 activations");
  const int64_t mt = (p.M + kTile - 1) / kTile, nt = (p.N + kTile - 1) / kTile;
  TORCH_CHECK(nt <= 65535, "N = ", p.N, " is too large for the tiled int8 GEMM (at most ",
              65535 * kTile, ")");
  dim3 grid(static_cast<unsigned>(mt), static_cast<unsigned>(nt));
  gemm_tiled_kernel<<<grid, 256, 0, stream>>>(p.x, p.ldx, p.w, p.ldw, p.M, p.N, p.Kp, e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs X W^T with epilogue `e` on `path` (from path_for(M)). The problem's X must already
// satisfy gemm.cuh's requirements; x_xor only for the paths that read uint8 themselves.
void run_gemm(const GemmProblem& p, const Epilogue& e, const at::Tensor& like, Path path) {
  if (p.M == 0 || p.N == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  TORCH_CHECK(!p.x_xor || reads_uint8(path), "internal: uint8 activations on a path that needs int8");
  if (path == Path::Tiled) {
    launch_tiled_checked(p, e, stream);
    return;
  }
  if (path == Path::Gemv) {
    launch_gemv(p, e, stream);
    return;
  }
  if (path == Path::Mma) {
    launch_gemv_mma(p, e, stream);
    return;
  }
  if (p.Kp > 0) {
    // D straight into the output when the epilogue is the identity and the layout allows.
    if (e.kind == OutKind::Int32 && e.ldo == p.N && p.N % 4 == 0 &&
        lt_gemm_s32(p, static_cast<int32_t*>(e.out), e.ldo, stream)) {
      return;
    }
    const int64_t ldd = round_up(p.N, 4);
    at::Tensor d = at::empty({p.M, ldd}, like.options().dtype(at::kInt));
    if (lt_gemm_s32(p, d.data_ptr<int32_t>(), ldd, stream)) {
      launch_epilogue(d.data_ptr<int32_t>(), ldd, p.M, p.N, e, stream);
      return;
    }
  }
  launch_tiled_checked(p, e, stream);
}

// The activation operand of a GEMM: `x2d` [M, K] int8/uint8 used in place when the kernels
// can read it as is, else copied into a zero-padded [M, round_up(K, 16)] int8 buffer (uint8
// converted to x - 128). `allow_xor`: the consumer (gemv) flips uint8 itself.
struct Activation {
  at::Tensor keep;
  const int8_t* ptr = nullptr;
  int64_t ld = 0;
  bool x_xor = false;
};

Activation prepare_activation(const at::Tensor& x2d, int64_t Kp, bool allow_xor) {
  const int64_t M = x2d.size(0), K = x2d.size(1);
  const bool u = x2d.scalar_type() == at::kByte;
  Activation a;
  // Rows of M > 1 are read at stride(0): it must keep every row 16-byte aligned.
  const bool rows_ok = M <= 1 || (x2d.stride(0) % 16 == 0 && x2d.stride(0) >= Kp);
  const bool direct = K > 0 && K == Kp && x2d.stride(1) == 1 && rows_ok &&
                      aligned16(x2d.data_ptr()) && (!u || allow_xor);
  if (direct) {
    a.keep = x2d;
    a.ptr = static_cast<const int8_t*>(x2d.data_ptr());
    a.ld = M <= 1 ? Kp : x2d.stride(0);
    a.x_xor = u;
    return a;
  }
  a.keep = at::empty({M, Kp}, x2d.options().dtype(at::kChar));
  a.ptr = a.keep.data_ptr<int8_t>();
  a.ld = Kp;
  a.x_xor = false;
  if (M > 0 && Kp > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    pad_copy_kernel<<<grid_for(M * (Kp / 16)), kThreads, 0, stream>>>(
        static_cast<const uint8_t*>(x2d.data_ptr()), x2d.stride(0), x2d.stride(1), M, K, u,
        reinterpret_cast<uint8_t*>(a.keep.data_ptr<int8_t>()), Kp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return a;
}

// Rows of x [..., K]: the product of the leading dimensions (1 for a 1-D x).
int64_t leading_rows(const at::Tensor& x) {
  int64_t M = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) M *= x.size(d);
  return M;
}

// Checks a packed CUDA weight against K and returns N.
int64_t check_packed(const at::Tensor& w_packed, const at::Tensor& col_sums,
                     const at::Tensor& w_scale, int64_t K, const at::Tensor& x) {
  TORCH_CHECK(w_packed.defined(), "argument 'w_packed' must be a tensor, got None");
  check_same_device(x, "x", w_packed, "w_packed");
  TORCH_CHECK(w_packed.scalar_type() == at::kChar && w_packed.dim() == 2,
              "argument 'w_packed' must be the int8 [N, round_up(K, 16)] tensor that pack_weight "
              "returns for a CUDA weight, got dtype ", w_packed.scalar_type(), " and shape ",
              w_packed.sizes());
  const int64_t Kp = round_up(K, kKAlign);
  TORCH_CHECK(w_packed.size(1) == Kp,
              "argument 'w_packed' has ", w_packed.size(1), " columns, but x has K = ", K,
              " (a CUDA packed weight has round_up(K, 16) = ", Kp,
              " columns; pack_weight must run on the weight's CUDA copy)");
  TORCH_CHECK(w_packed.is_contiguous(), "argument 'w_packed' must be contiguous");
  const int64_t N = w_packed.size(0);
  TORCH_CHECK(col_sums.defined() && col_sums.scalar_type() == at::kInt && col_sums.numel() == N,
              "argument 'w_col_sums' must be an int32 tensor of ", N, " elements, got ",
              col_sums.defined() ? c10::toString(col_sums.scalar_type()) : "None",
              col_sums.defined() ? " with " + std::to_string(col_sums.numel()) + " elements" : "");
  check_same_device(x, "x", col_sums, "w_col_sums");
  check_float_input(w_scale, "w_scale");
  TORCH_CHECK(w_scale.numel() == N, "argument 'w_scale' must have ", N, " elements, got ",
              w_scale.numel());
  check_same_device(x, "x", w_scale, "w_scale");
  return N;
}

// The packed weight as the kernels read it: rows with 16-byte loads from a 16-byte aligned
// base. A packed tensor that is a view at another offset (carved out of a flat buffer, say) is
// copied, on each call (pack_weight never makes such a view); reading it in place would fault
// on a misaligned address.
at::Tensor aligned_packed(const at::Tensor& w_packed) {
  return aligned16(w_packed.data_ptr()) ? w_packed : w_packed.clone(at::MemoryFormat::Contiguous);
}

at::Tensor bias_float(const std::optional<at::Tensor>& bias, int64_t N, const at::Tensor& x) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  check_float_input(*bias, "bias");
  TORCH_CHECK(bias->numel() == N, "argument 'bias' must have ", N, " elements, got ",
              bias->numel());
  check_same_device(x, "x", *bias, "bias");
  return bias->reshape({N}).to(at::kFloat).contiguous();
}

std::vector<int64_t> out_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = N;
  return s;
}

}  // namespace

// ------------------------------------------------------------------ ops
at::Tensor int8_mm_cuda(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.defined() && a.scalar_type() == at::kChar && a.dim() == 2,
              "argument 'a' must be a 2-D int8 tensor, got ",
              a.defined() ? c10::toString(a.scalar_type()) : "None", " with ", a.dim(), " dims");
  TORCH_CHECK(b.defined() && b.scalar_type() == at::kChar && b.dim() == 2,
              "argument 'b' must be a 2-D int8 tensor, got ",
              b.defined() ? c10::toString(b.scalar_type()) : "None", " with ", b.dim(), " dims");
  TORCH_CHECK(a.size(1) == b.size(0), "arguments 'a' ", a.sizes(), " and 'b' ", b.sizes(),
              " cannot be multiplied: a.size(1) must equal b.size(0)");
  check_same_device(a, "a", b, "b");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  check_k_bound(K, "a");
  c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty({M, N}, a.options().dtype(at::kInt));
  if (M == 0 || N == 0) return out;
  if (K == 0) return out.zero_();
  const int64_t Kp = round_up(K, kKAlign);
  // W = b^T [N, K]: used in place when b is the transpose of an aligned row-major [N, Kp]
  // (rows of W at least Kp apart, as for activations: an expanded b, stride 0, would hand
  // cuBLASLt a leading dimension smaller than K).
  at::Tensor wt;
  const int8_t* wp;
  int64_t ldw;
  const bool w_rows_ok = N <= 1 || (b.stride(1) % 16 == 0 && b.stride(1) >= Kp);
  if (K == Kp && b.stride(0) == 1 && w_rows_ok && aligned16(b.data_ptr())) {
    wp = b.data_ptr<int8_t>();
    ldw = N <= 1 ? Kp : b.stride(1);
  } else {
    wt = at::empty({N, Kp}, b.options());
    pad_copy_kernel<<<grid_for(N * (Kp / 16)), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<const uint8_t*>(b.data_ptr()), b.stride(1), b.stride(0), N, K, false,
        reinterpret_cast<uint8_t*>(wt.data_ptr<int8_t>()), Kp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    wp = wt.data_ptr<int8_t>();
    ldw = Kp;
  }
  const Path path = path_for(M);
  const Activation x = prepare_activation(a, Kp, /*allow_xor=*/false);
  GemmProblem p;
  p.x = x.ptr;
  p.ldx = x.ld;
  p.w = wp;
  p.ldw = ldw;
  p.M = M;
  p.N = N;
  p.Kp = Kp;
  Epilogue e;
  e.kind = OutKind::Int32;
  e.out = out.data_ptr<int32_t>();
  e.ldo = N;
  run_gemm(p, e, a, path);
  return out;
}

std::tuple<at::Tensor, at::Tensor> pack_weight_cuda(const at::Tensor& w) {
  TORCH_CHECK(w.defined() && w.scalar_type() == at::kChar && w.dim() == 2,
              "argument 'w' must be a 2-D int8 tensor [N, K], got ",
              w.defined() ? c10::toString(w.scalar_type()) : "None", " with ",
              w.defined() ? w.dim() : 0, " dims");
  const int64_t N = w.size(0), K = w.size(1);
  check_k_bound(K, "w");
  c10::cuda::CUDAGuard guard(w.device());
  const int64_t Kp = round_up(K, kKAlign);
  at::Tensor packed = at::empty({N, Kp}, w.options());
  at::Tensor sums = at::empty({N}, w.options().dtype(at::kInt));
  if (N == 0) return {packed, sums};
  if (Kp == 0) return {packed, sums.zero_()};
  const unsigned grid = static_cast<unsigned>(N < 65535 * 4 ? N : 65535 * 4);
  pack_weight_kernel<<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      w.data_ptr<int8_t>(), w.stride(0), w.stride(1), N, K, packed.data_ptr<int8_t>(), Kp,
      sums.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {packed, sums};
}

at::Tensor linear_int8_cuda(const at::Tensor& x, const at::Tensor& x_scale,
                            const at::Tensor& x_zero_point, const at::Tensor& w_packed,
                            const at::Tensor& w_col_sums, const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& out_scale,
                            const std::optional<at::Tensor>& out_zero_point, bool relu,
                            std::optional<at::ScalarType> out_dtype) {
  check_int8_input(x, "x");
  TORCH_CHECK(x.dim() >= 1, "argument 'x' must have at least one dimension, got a scalar");
  const int64_t K = x.size(-1);
  check_k_bound(K, "x");
  const int64_t N = check_packed(w_packed, w_col_sums, w_scale, K, x);
  const int64_t M = leading_rows(x), rows = M;
  check_float_input(x_scale, "x_scale");
  TORCH_CHECK(x_scale.numel() == 1 || x_scale.numel() == rows,
              "argument 'x_scale' must have 1 element (per tensor) or ", rows,
              " (per row), got ", x_scale.numel());
  TORCH_CHECK(x_zero_point.defined(), "argument 'x_zero_point' must be a tensor, got None");
  TORCH_CHECK(at::isIntegralType(x_zero_point.scalar_type(), /*includeBool=*/false),
              "argument 'x_zero_point' must be an integer tensor, got dtype ",
              x_zero_point.scalar_type());
  TORCH_CHECK(x_zero_point.numel() == 1 || x_zero_point.numel() == rows,
              "argument 'x_zero_point' must have 1 element (per tensor) or ", rows,
              " (per row), got ", x_zero_point.numel());
  check_same_device(x, "x", x_scale, "x_scale");
  check_same_device(x, "x", x_zero_point, "x_zero_point");
  const at::ScalarType odt = out_dtype.value_or(at::kFloat);
  const OutKind kind = out_kind(odt);
  const bool quant_out = kind == OutKind::Int8 || kind == OutKind::UInt8;
  at::Tensor os, ozp;
  if (quant_out) {
    TORCH_CHECK(out_scale.has_value() && out_scale->defined() && out_zero_point.has_value() &&
                    out_zero_point->defined(),
                "arguments 'out_scale' and 'out_zero_point' are required for out_dtype ", odt);
    check_float_input(*out_scale, "out_scale");
    TORCH_CHECK(out_scale->numel() == 1, "argument 'out_scale' must have 1 element, got ",
                out_scale->numel());
    TORCH_CHECK(at::isIntegralType(out_zero_point->scalar_type(), /*includeBool=*/false),
                "argument 'out_zero_point' must be an integer tensor, got dtype ",
                out_zero_point->scalar_type());
    TORCH_CHECK(out_zero_point->numel() == 1,
                "argument 'out_zero_point' must have 1 element, got ", out_zero_point->numel());
    check_same_device(x, "x", *out_scale, "out_scale");
    check_same_device(x, "x", *out_zero_point, "out_zero_point");
  }
  c10::cuda::CUDAGuard guard(x.device());
  if (quant_out) {
    os = out_scale->reshape({1}).to(at::kFloat).contiguous();
    ozp = zero_point_int32(out_zero_point->reshape({1})).contiguous();
  }
  const at::Tensor xs = x_scale.reshape({-1}).to(at::kFloat).contiguous();
  const at::Tensor xz = zero_point_int32(x_zero_point.reshape({-1})).contiguous();
  const at::Tensor ws = w_scale.reshape({N}).to(at::kFloat).contiguous();
  const at::Tensor cs = w_col_sums.reshape({N}).contiguous();
  const at::Tensor b = bias_float(bias, N, x);
  at::Tensor out = at::empty(out_shape(x, N), x.options().dtype(odt));
  if (M == 0 || N == 0) return out;

  const int64_t Kp = round_up(K, kKAlign);
  const at::Tensor x2d = x.reshape({M, K});
  const Path path = path_for(M);
  const Activation a = prepare_activation(x2d, Kp, /*allow_xor=*/reads_uint8(path));
  const bool u = x.scalar_type() == at::kByte;
  GemmProblem p;
  p.x = a.ptr;
  p.ldx = a.ld;
  p.x_xor = a.x_xor;
  const at::Tensor wp = aligned_packed(w_packed);
  p.w = wp.data_ptr<int8_t>();
  p.ldw = Kp;
  p.M = M;
  p.N = N;
  p.Kp = Kp;
  Epilogue e;
  e.kind = kind;
  e.out = out.data_ptr();
  e.ldo = N;
  e.col_sums = cs.data_ptr<int32_t>();
  e.x_zp = xz.data_ptr<int32_t>();
  e.x_zp_per_row = xz.numel() > 1;
  e.x_zp_lo = u ? 0 : -128;
  e.x_zp_hi = u ? 255 : 127;
  e.zp_shift = u ? 128 : 0;  // uint8 is always read as x - 128, in the copy or in gemv
  e.x_scale = xs.data_ptr<float>();
  e.x_scale_per_row = xs.numel() > 1;
  e.w_scale = ws.data_ptr<float>();
  e.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  e.relu = relu;
  if (quant_out) {
    e.out_scale = os.data_ptr<float>();
    e.out_zp = ozp.data_ptr<int32_t>();
  }
  run_gemm(p, e, x, path);
  return out;
}

namespace {

// Quantizes x [M, K] per row into a [M, ldq] int8 buffer (columns past K zero).
void launch_rowwise(const at::Tensor& xf, int64_t M, int64_t K, at::Tensor& q, int64_t ldq,
                    at::Tensor& scale, at::Tensor& zp, int64_t qmin, int64_t qmax) {
  if (M == 0) return;
  const unsigned grid = static_cast<unsigned>(M < 65535 * 8 ? M : 65535 * 8);
  quantize_rowwise_kernel<<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      xf.data_ptr<float>(), M, K, q.data_ptr<int8_t>(), ldq, scale.data_ptr<float>(),
      zp.data_ptr<int32_t>(), static_cast<int32_t>(qmin), static_cast<int32_t>(qmax));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rowwise_cuda(const at::Tensor& x,
                                                                     int64_t qmin, int64_t qmax) {
  check_float_input(x, "x");
  TORCH_CHECK(x.dim() >= 1, "argument 'x' must have at least one dimension, got a scalar");
  check_qrange(qmin, qmax, at::kChar);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = x.size(-1);
  const int64_t rows = leading_rows(x);
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor zp = at::empty({rows}, x.options().dtype(at::kInt));
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  launch_rowwise(xf, rows, K, q, K, scale, zp, qmin, qmax);
  return {q, scale, zp};
}

at::Tensor linear_dynamic_cuda(const at::Tensor& x, const at::Tensor& w_packed,
                               const at::Tensor& w_col_sums, const at::Tensor& w_scale,
                               const std::optional<at::Tensor>& bias, bool relu, bool reduce_range) {
  check_float_input(x, "x");
  TORCH_CHECK(x.dim() >= 1, "argument 'x' must have at least one dimension, got a scalar");
  const int64_t K = x.size(-1);
  check_k_bound(K, "x");
  const int64_t N = check_packed(w_packed, w_col_sums, w_scale, K, x);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor ws = w_scale.reshape({N}).to(at::kFloat).contiguous();
  const at::Tensor cs = w_col_sums.reshape({N}).contiguous();
  const at::Tensor b = bias_float(bias, N, x);
  at::Tensor out = at::empty(out_shape(x, N), x.options().dtype(at::kFloat));
  const int64_t M = leading_rows(x);
  if (M == 0 || N == 0) return out;
  const int64_t Kp = round_up(K, kKAlign);
  const at::Tensor xf = x.reshape({M, K}).to(at::kFloat).contiguous();
  at::Tensor q = at::empty({M, Kp}, x.options().dtype(at::kChar));
  at::Tensor xs = at::empty({M}, x.options().dtype(at::kFloat));
  at::Tensor xz = at::empty({M}, x.options().dtype(at::kInt));
  // 7-bit rows (reduce_range): codes and zero points in [0, 127], read as the int8 values they
  // also are; the same integer arithmetic as the CPU's uint8 reading of them.
  launch_rowwise(xf, M, K, q, Kp, xs, xz, reduce_range ? 0 : -128, 127);
  GemmProblem p;
  p.x = q.data_ptr<int8_t>();
  p.ldx = Kp;
  const at::Tensor wp = aligned_packed(w_packed);
  p.w = wp.data_ptr<int8_t>();
  p.ldw = Kp;
  p.M = M;
  p.N = N;
  p.Kp = Kp;
  Epilogue e;
  e.kind = OutKind::Float;
  e.out = out.data_ptr<float>();
  e.ldo = N;
  e.col_sums = cs.data_ptr<int32_t>();
  e.x_zp = xz.data_ptr<int32_t>();
  e.x_zp_per_row = true;
  e.x_scale = xs.data_ptr<float>();
  e.x_scale_per_row = true;
  e.w_scale = ws.data_ptr<float>();
  e.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  e.relu = relu;
  run_gemm(p, e, x, path_for(M));
  return out;
}

TORCH_LIBRARY_IMPL(torchquant, CUDA, m) {
  m.impl("int8_mm", &int8_mm_cuda);
  m.impl("pack_weight", &pack_weight_cuda);
  m.impl("linear_int8", &linear_int8_cuda);
  m.impl("quantize_rowwise", &quantize_rowwise_cuda);
  m.impl("linear_dynamic", &linear_dynamic_cuda);
}

}  // namespace cuda
}  // namespace torchquant
