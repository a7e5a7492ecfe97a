// CUDA kernels for the observer statistics: aminmax, observe_minmax_, histogram_,
// histogram_rebin. Semantics, checks and float arithmetic are those of cpu/observe.cpp, so the
// results are bit-identical with the CPU kernels (min/max are exact; the few float steps use
// explicitly rounded intrinsics, and the build passes -fmad=false as well).
//
// No host synchronization anywhere: every decision that depends on data (first observation,
// nothing finite in a channel, growth of a histogram's range) is taken on the device by a small
// kernel that reads the partial results of the pass over x.
//
// Reductions are two-phase and deterministic: a pass over x writes one partial (min, max) per
// block or per task and one pair of non-finite counts per block; a small kernel folds them.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/checks.h"
#include "common/observe_checks.h"
#include "cuda/common.cuh"
#include "ops.h"

namespace torchquant {
namespace cuda {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
using u64 = unsigned long long;

// A thread counts its NaN / Inf in 32 bits: it sees at most numel / (one block's threads)
// elements, below 2^32 as long as numel < 2^40 (checked on the host).
constexpr int64_t kMaxNumel = int64_t{1} << 40;

int sm_count() {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

// ------------------------------------------------------------------ one element, one block

// fminf / fmaxf drop a NaN operand, which is exactly "NaN never enters a min or max"; with
// kSkipInf a +-Inf is turned into NaN first so that it is dropped too. Counted either way.
template <bool kSkipInf>
__device__ __forceinline__ void fold(float v, float& mn, float& mx, uint32_t& nan, uint32_t& inf) {
  const float a = fabsf(v);
  nan += v != v;
  inf += a == kInf;
  const float w = kSkipInf ? (a < kInf ? v : __int_as_float(0x7fc00000)) : v;
  mn = fminf(mn, w);
  mx = fmaxf(mx, w);
}

__device__ __forceinline__ float warp_min(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ u64 warp_sum(u64 v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct Acc {
  float mn, mx;
  u64 nan, inf;
};

// Block-wide fold of every thread's Acc; the result is valid in thread 0. blockDim.x must be a
// multiple of 32 and at most 1024.
__device__ Acc block_reduce(Acc a) {
  __shared__ float smn[32], smx[32];
  __shared__ u64 snan[32], sinf[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  a.mn = warp_min(a.mn);
  a.mx = warp_max(a.mx);
  a.nan = warp_sum(a.nan);
  a.inf = warp_sum(a.inf);
  if (lane == 0) {
    smn[warp] = a.mn;
    smx[warp] = a.mx;
    snan[warp] = a.nan;
    sinf[warp] = a.inf;
  }
  __syncthreads();
  if (warp == 0) {
    a.mn = lane < warps ? smn[lane] : kInf;
    a.mx = lane < warps ? smx[lane] : -kInf;
    a.nan = lane < warps ? snan[lane] : 0;
    a.inf = lane < warps ? sinf[lane] : 0;
    a.mn = warp_min(a.mn);
    a.mx = warp_max(a.mx);
    a.nan = warp_sum(a.nan);
    a.inf = warp_sum(a.inf);
  }
  return a;
}

// Calls f(x[i]) for this thread's share of i < n in a grid-stride loop. kVec (x 16-byte
// aligned): 16-byte vectors, consecutive lanes on consecutive vectors (each warp load is 512
// contiguous bytes), four independent loads in flight per thread per step; then the tail (n % 4
// elements) one at a time.
template <bool kVec, class F>
__device__ __forceinline__ void grid_stride_floats(const float* __restrict__ x, int64_t n, F&& f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (kVec) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const int64_t n4 = n / 4;
    for (int64_t q = first; q < n4; q += 4 * stride) {
      float4 v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t qk = q + k * stride;
        v[k] = qk < n4 ? x4[qk] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (q + k * stride < n4) {
          f(v[k].x);
          f(v[k].y);
          f(v[k].z);
          f(v[k].w);
        }
      }
    }
    done = n4 * 4;
  }
  for (int64_t i = done + first; i < n; i += stride) f(x[i]);
}

// ------------------------------------------------------------------ pass over x: partials

// Per tensor: block b writes pmn[b], pmx[b], pcnt[2b], pcnt[2b + 1] (NaN, Inf). V = 16 (four
// 16-byte loads per step, grid-strided) when x is 16-byte aligned, 1 otherwise.
template <bool kSkipInf, int V>
__global__ void __launch_bounds__(kThreads)
    minmax_flat_kernel(const float* __restrict__ x, int64_t n, float* pmn, float* pmx, u64* pcnt) {
  float mn = kInf, mx = -kInf;
  uint32_t nan = 0, inf = 0;
  grid_stride_floats<(V > 1)>(x, n, [&](float v) { fold<kSkipInf>(v, mn, mx, nan, inf); });
  const Acc a = block_reduce(Acc{mn, mx, nan, inf});
  if (threadIdx.x == 0) {
    pmn[blockIdx.x] = a.mn;
    pmx[blockIdx.x] = a.mx;
    pcnt[2 * blockIdx.x] = a.nan;
    pcnt[2 * blockIdx.x + 1] = a.inf;
  }
}

// Per channel, long runs (x viewed as [outer, C, inner], inner >= kRowMinInner): the L =
// outer * inner elements of channel c are split in S pieces; task t = (c = t / S, s = t % S)
// is one warp's, which writes pmn[t], pmx[t]. A lane walks element e of the channel as
// (o, i) = (e / inner, e % inner), kept by increments (one division per task). V = 4 where
// inner % 4 == 0 and x is aligned (a vector never straddles two runs), else 1; pieces are
// multiples of V long.
template <bool kSkipInf, int V>
__global__ void __launch_bounds__(kThreads)
    minmax_rows_kernel(const float* __restrict__ x, int64_t C, int64_t inner, int64_t L,
                       int64_t S, int64_t piece, float* pmn, float* pmx, u64* pcnt) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_block = blockDim.x >> 5;
  const int64_t warp0 = static_cast<int64_t>(blockIdx.x) * warps_per_block + (threadIdx.x >> 5);
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * warps_per_block;
  uint32_t nan = 0, inf = 0;
  for (int64_t t = warp0; t < C * S; t += warp_stride) {
    const int64_t c = t / S, s = t - (t / S) * S;
    const int64_t lo = s * piece, hi = lo + piece < L ? lo + piece : L;
    float mn = kInf, mx = -kInf;
    int64_t e = lo + lane * V;
    int64_t o = e / inner, i = e - o * inner;
    for (; e < hi; e += 32 * V) {
      const float* p = x + (o * C + c) * inner + i;
      if (V == 1) {
        fold<kSkipInf>(*p, mn, mx, nan, inf);
      } else {
        const Vec<float, V> xv = load_vec<float, V>(p);
#pragma unroll
        for (int j = 0; j < V; ++j) fold<kSkipInf>(xv.v[j], mn, mx, nan, inf);
      }
      i += 32 * V;
      while (i >= inner) {  // at most 32 * V / inner + 1 times
        i -= inner;
        ++o;
      }
    }
    mn = warp_min(mn);
    mx = warp_max(mx);
    if (lane == 0) {
      pmn[t] = mn;
      pmx[t] = mx;
    }
  }
  const Acc a = block_reduce(Acc{kInf, -kInf, nan, inf});
  if (threadIdx.x == 0) {
    pcnt[2 * blockIdx.x] = a.nan;
    pcnt[2 * blockIdx.x + 1] = a.inf;
  }
}

// Ordered-int images of floats (never NaN here) for shared-memory atomicMin / atomicMax.
__device__ __forceinline__ int to_ordered(float f) {
  const int b = __float_as_int(f);
  return b >= 0 ? b : b ^ 0x7fffffff;
}
__device__ __forceinline__ float from_ordered(int o) {
  return __int_as_float(o >= 0 ? o : o ^ 0x7fffffff);
}

// Per channel, short runs (inner < kRowMinInner) and narrow rows (W = C * inner <=
// kColMaxWidth): element e belongs to column e % W. Thread t reads the V-vectors t, t + P,
// t + 2P, ... with P * V a multiple of W, so its V columns never change and it folds them in
// registers (coalesced reads, no division in the loop). Threads then fold their columns into
// the block's shared columns, and block b writes pmn[b * W + j], pmx[b * W + j].
template <bool kSkipInf, int V>
__global__ void __launch_bounds__(kThreads)
    minmax_cols_kernel(const float* __restrict__ x, int64_t n, int64_t W, int64_t P, float* pmn,
                       float* pmx, u64* pcnt) {
  extern __shared__ int scol[];  // [2 * W]: ordered mins, ordered maxes
  for (int64_t j = threadIdx.x; j < W; j += blockDim.x) {
    scol[j] = to_ordered(kInf);
    scol[W + j] = to_ordered(-kInf);
  }
  __syncthreads();
  float mn[V], mx[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    mn[j] = kInf;
    mx[j] = -kInf;
  }
  uint32_t nan = 0, inf = 0;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / V;
  if (t < P) {
    for (int64_t v = t; v < nvec; v += P) {
      const Vec<float, V> xv = load_vec<float, V>(x + v * V);
#pragma unroll
      for (int j = 0; j < V; ++j) fold<kSkipInf>(xv.v[j], mn[j], mx[j], nan, inf);
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t col = (t * V + j) % W;
      if (mn[j] <= mx[j]) {
        atomicMin(&scol[col], to_ordered(mn[j]));
        atomicMax(&scol[W + col], to_ordered(mx[j]));
      }
    }
  }
  // The last n % V elements, one per thread of block 0.
  if (blockIdx.x == 0 && threadIdx.x < n - nvec * V) {
    const int64_t e = nvec * V + threadIdx.x;
    float a = kInf, b = -kInf;
    fold<kSkipInf>(x[e], a, b, nan, inf);
    if (a <= b) {
      atomicMin(&scol[e % W], to_ordered(a));
      atomicMax(&scol[W + e % W], to_ordered(b));
    }
  }
  const Acc acc = block_reduce(Acc{kInf, -kInf, nan, inf});  // has a __syncthreads
  __syncthreads();
  for (int64_t j = threadIdx.x; j < W; j += blockDim.x) {
    pmn[blockIdx.x * W + j] = from_ordered(scol[j]);
    pmx[blockIdx.x * W + j] = from_ordered(scol[W + j]);
  }
  if (threadIdx.x == 0) {
    pcnt[2 * blockIdx.x] = acc.nan;
    pcnt[2 * blockIdx.x + 1] = acc.inf;
  }
}

constexpr int64_t kRowMinInner = 32;
constexpr int64_t kColMaxWidth = 4096;  // 32 KiB of shared columns

// Where the partials of channel c lie: the k-th of its K partials is
// pmn[(k / group) * group_stride + c * channel_stride + k % group].
struct Partials {
  at::Tensor mn, mx, cnt;  // float32, float32, int64 [2 * count_blocks]
  int64_t K = 0, group = 1, group_stride = 0, channel_stride = 0, count_blocks = 0;
};

// One pass over x (float32, contiguous, numel > 0) into partials of C channels.
Partials minmax_partials(const at::Tensor& x, int64_t axis, bool skip_inf, cudaStream_t stream) {
  const int64_t n = x.numel();
  TORCH_CHECK(n < kMaxNumel, "argument 'x' has too many elements for the CUDA observers: ", n);
  const float* px = x.data_ptr<float>();
  const bool aligned = aligned16(px);
  int64_t C = 1, inner = 1;
  if (axis >= 0) {
    C = x.size(axis);
    for (int64_t d = axis + 1; d < x.dim(); ++d) inner *= x.size(d);
  }
  const auto fopt = x.options().dtype(at::kFloat);
  const auto lopt = x.options().dtype(at::kLong);
  const int sms = sm_count();
  Partials p;
  auto ptrs = [&](int64_t count, int64_t blocks) {
    p.mn = at::empty({count}, fopt);
    p.mx = at::empty({count}, fopt);
    p.cnt = at::empty({2 * blocks}, lopt);
    p.count_blocks = blocks;
  };
  // The kernel for skip_inf, as a pointer (one launch statement per instantiation pair).
#define TQ_PICK(KERNEL, V) (skip_inf ? &KERNEL<true, V> : &KERNEL<false, V>)
  if (axis < 0) {
    const int V = aligned ? 16 : 1;
    const unsigned grid = grid_for((n + V - 1) / V);
    ptrs(grid, grid);
    float *mn = p.mn.data_ptr<float>(), *mx = p.mx.data_ptr<float>();
    u64* cnt = reinterpret_cast<u64*>(p.cnt.data_ptr<int64_t>());
    auto kernel = aligned ? TQ_PICK(minmax_flat_kernel, 16) : TQ_PICK(minmax_flat_kernel, 1);
    kernel<<<grid, kThreads, 0, stream>>>(px, n, mn, mx, cnt);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    p.K = grid;
    p.group = grid;
    return p;
  }
  const int64_t W = C * inner;
  if (inner < kRowMinInner && W <= kColMaxWidth) {
    const int V = aligned ? 4 : 1;
    const int64_t m = W / std::gcd<int64_t>(W, V);  // P must be a multiple of m
    const int64_t nvec = n / V;
    // Each block writes W partials: at most n / 16 of them in all, so that the fold reads a
    // small fraction of what the pass read; enough threads for one period m of columns.
    int64_t grid = std::min<int64_t>(grid_for(nvec), std::max<int64_t>(1, n / (16 * W)));
    grid = std::max<int64_t>(grid, (m + kThreads - 1) / kThreads);
    const int64_t P = std::max<int64_t>(m, (grid * kThreads / m) * m);
    ptrs(grid * W, grid);
    float *mn = p.mn.data_ptr<float>(), *mx = p.mx.data_ptr<float>();
    u64* cnt = reinterpret_cast<u64*>(p.cnt.data_ptr<int64_t>());
    const size_t smem = 2 * W * sizeof(int);
    auto kernel = aligned ? TQ_PICK(minmax_cols_kernel, 4) : TQ_PICK(minmax_cols_kernel, 1);
    kernel<<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(px, n, W, P, mn, mx, cnt);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    p.K = grid * inner;
    p.group = inner;
    p.group_stride = W;
    p.channel_stride = inner;
    return p;
  }
  // Long runs (or rows too wide for shared columns).
  const int V = (aligned && inner % 4 == 0) ? 4 : 1;
  const int64_t L = n / C;
  const int64_t warps_wanted = static_cast<int64_t>(sms) * 64;
  int64_t S = std::max<int64_t>(1, (warps_wanted + C - 1) / C);
  S = std::min<int64_t>(S, std::max<int64_t>(1, L / 1024));
  int64_t piece = (L + S - 1) / S;
  piece = (piece + V - 1) / V * V;
  S = (L + piece - 1) / piece;
  const int64_t warps_per_block = kThreads / 32;
  const int64_t grid =
      std::min<int64_t>((C * S + warps_per_block - 1) / warps_per_block, static_cast<int64_t>(sms) * 8);
  ptrs(C * S, grid);
  float *mn = p.mn.data_ptr<float>(), *mx = p.mx.data_ptr<float>();
  u64* cnt = reinterpret_cast<u64*>(p.cnt.data_ptr<int64_t>());
  auto kernel = V == 4 ? TQ_PICK(minmax_rows_kernel, 4) : TQ_PICK(minmax_rows_kernel, 1);
  kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(px, C, inner, L, S, piece, mn, mx,
                                                                cnt);
#undef TQ_PICK
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  p.K = S;
  p.group = S;
  p.channel_stride = S;
  return p;
}

// ------------------------------------------------------------------ fold partials, update

enum class Finish { Aminmax, Running, MovingAverage };

// One warp per channel folds its K partials. Aminmax: writes out_mn/out_mx. Running /
// MovingAverage: cpu/observe.cpp's update of running_min/max, and the first warp adds the
// non-finite counts to `counts`.
template <Finish kFinish>
__global__ void __launch_bounds__(kThreads)
    finish_minmax_kernel(const float* __restrict__ pmn, const float* __restrict__ pmx,
                         const u64* __restrict__ pcnt, int64_t count_blocks, int64_t C, int64_t K,
                         int64_t group, int64_t group_stride, int64_t channel_stride, float* out_mn,
                         float* out_mx, int64_t* counts, float c) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_block = blockDim.x >> 5;
  const int64_t warp0 = static_cast<int64_t>(blockIdx.x) * warps_per_block + (threadIdx.x >> 5);
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * warps_per_block;
  if (kFinish != Finish::Aminmax && warp0 == 0) {
    u64 nan = 0, inf = 0;
    for (int64_t b = lane; b < count_blocks; b += 32) {
      nan += pcnt[2 * b];
      inf += pcnt[2 * b + 1];
    }
    nan = warp_sum(nan);
    inf = warp_sum(inf);
    if (lane == 0) {
      counts[0] += static_cast<int64_t>(nan);
      counts[1] += static_cast<int64_t>(inf);
    }
  }
  for (int64_t ch = warp0; ch < C; ch += warp_stride) {
    float mn = kInf, mx = -kInf;
    const int64_t base = ch * channel_stride;
    if (K <= INT32_MAX && group <= INT32_MAX) {  // 32-bit division: several times cheaper
      const uint32_t g = static_cast<uint32_t>(group);
      for (uint32_t k = lane; k < static_cast<uint32_t>(K); k += 32) {
        const int64_t idx = static_cast<int64_t>(k / g) * group_stride + base + k % g;
        mn = fminf(mn, pmn[idx]);
        mx = fmaxf(mx, pmx[idx]);
      }
    } else {
      for (int64_t k = lane; k < K; k += 32) {
        const int64_t idx = (k / group) * group_stride + base + k % group;
        mn = fminf(mn, pmn[idx]);
        mx = fmaxf(mx, pmx[idx]);
      }
    }
    mn = warp_min(mn);
    mx = warp_max(mx);
    if (lane != 0) continue;
    if (kFinish == Finish::Aminmax) {
      out_mn[ch] = mn;
      out_mx[ch] = mx;
      continue;
    }
    if (!(mn <= mx)) continue;  // nothing finite in this channel of this batch
    const float rmn = out_mn[ch], rmx = out_mx[ch];
    if (rmn == kInf && rmx == -kInf) {  // first observation
      out_mn[ch] = mn;
      out_mx[ch] = mx;
    } else if (kFinish == Finish::Running) {
      // std::min / std::max exactly (a NaN running value stays, as on the CPU).
      out_mn[ch] = mn < rmn ? mn : rmn;
      out_mx[ch] = rmx < mx ? mx : rmx;
    } else {
      // running + c * (current - running), each step rounded to float32, nothing fused.
      out_mn[ch] = __fadd_rn(rmn, __fmul_rn(c, __fsub_rn(mn, rmn)));
      out_mx[ch] = __fadd_rn(rmx, __fmul_rn(c, __fsub_rn(mx, rmx)));
    }
  }
}

template <Finish kFinish>
void finish_minmax(const Partials& p, int64_t C, float* out_mn, float* out_mx, int64_t* counts,
                   float c, cudaStream_t stream) {
  const unsigned grid = grid_for(C * 32);
  finish_minmax_kernel<kFinish><<<grid, kThreads, 0, stream>>>(
      p.mn.data_ptr<float>(), p.mx.data_ptr<float>(),
      reinterpret_cast<const u64*>(p.cnt.data_ptr<int64_t>()), p.count_blocks, C, p.K, p.group,
      p.group_stride, p.channel_stride, out_mn, out_mx, counts, c);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------------ histogram

// cpu::histogram_bin (cpu/observe_kernels.h), the same float32 steps.
__device__ __forceinline__ int32_t histogram_bin(float x, float lo, float inv_width, int32_t bins) {
  float t = __fmul_rn(__fsub_rn(x, lo), inv_width);
  // NaN (x == lo with an infinite inv_width: a range too narrow for float32) goes to bin 0, as
  // on the CPU; kept as NaN it would reach the conversion below, which is undefined for NaN.
  t = t > 0.0f ? t : 0.0f;
  const float top = static_cast<float>(bins - 1);
  t = t > top ? top : t;
  return static_cast<int32_t>(t);
}

__device__ __forceinline__ int32_t middle_bin(int32_t bins) {
  return bins / 2 < bins - 1 ? bins / 2 : bins - 1;
}

// Bin b of cpu/observe.cpp's rebin(hist, lo, hi, nlo, nhi, up): the same float64 positions,
// and the same order of additions (every bin receives a run of consecutive parts j, because
// the part -> bin map is monotone; the run is found by bisection, then summed in order of j).
// Requires nlo <= lo <= hi <= nhi, finite.
__device__ float rebin_bin(const float* __restrict__ h, int32_t bins, float lo, float hi,
                           float nlo, float nhi, int64_t up, int32_t b) {
  if (lo == hi) {
    const float inv = static_cast<float>(static_cast<double>(bins) /
                                         __dsub_rn(static_cast<double>(nhi), nlo));
    const int32_t target = nhi > nlo ? histogram_bin(lo, nlo, inv, bins) : middle_bin(bins);
    if (b != target) return 0.0f;
    double acc = 0.0;
    for (int32_t i = 0; i < bins; ++i) acc = __dadd_rn(acc, static_cast<double>(h[i]));
    return static_cast<float>(acc);
  }
  const int64_t parts = static_cast<int64_t>(bins) * up;
  const double w = __ddiv_rn(__dsub_rn(static_cast<double>(hi), lo), static_cast<double>(parts));
  const double to_bin = __ddiv_rn(static_cast<double>(bins), __dsub_rn(static_cast<double>(nhi), nlo));
  auto target = [&](int64_t j) -> int64_t {
    const double centre =
        __dadd_rn(static_cast<double>(lo), __dmul_rn(__dadd_rn(static_cast<double>(j), 0.5), w));
    double t = floor(__dmul_rn(__dsub_rn(centre, static_cast<double>(nlo)), to_bin));
    t = t < 0.0 ? 0.0 : (t > bins - 1 ? bins - 1 : t);
    return static_cast<int64_t>(t);
  };
  // [first, end): the parts whose target is b.
  auto lower_bound = [&](int64_t bin) {
    int64_t lo_j = 0, hi_j = parts;
    while (lo_j < hi_j) {
      const int64_t mid = lo_j + (hi_j - lo_j) / 2;
      if (target(mid) < bin) lo_j = mid + 1;
      else hi_j = mid;
    }
    return lo_j;
  };
  const int64_t first = lower_bound(b);
  const int64_t end = b == bins - 1 ? parts : lower_bound(b + 1);
  double acc = 0.0, share = 0.0;
  int64_t src = -1;
  for (int64_t j = first; j < end; ++j) {
    if (j / up != src) {  // the same quotient as the CPU's, computed once per source bin
      src = j / up;
      share = __ddiv_rn(static_cast<double>(h[src]), static_cast<double>(up));
    }
    acc = __dadd_rn(acc, share);
  }
  return static_cast<float>(acc);
}

// histogram_'s decision, made on the device from the pass over x.
struct HistState {
  int32_t mode;  // kNothing, kSpread, kOnePoint
  int32_t base;  // kKeep, kZero, kRebin
  float old_lo, old_hi, lo, hi, inv;
  u64 finite;
};
constexpr int32_t kNothing = 0, kSpread = 1, kOnePoint = 2;
constexpr int32_t kKeep = 0, kZero = 1, kRebin = 2;

// One block: folds the per-tensor partials, adds the counts, chooses the new range (as
// cpu/observe.cpp's histogram_cpu) and writes it to min_val / max_val.
__global__ void __launch_bounds__(kThreads)
    histogram_range_kernel(const float* __restrict__ pmn, const float* __restrict__ pmx,
                           const u64* __restrict__ pcnt, int64_t blocks, int64_t numel,
                           int32_t bins, float* min_val, float* max_val, int64_t* counts,
                           HistState* st) {
  Acc a{kInf, -kInf, 0, 0};
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) {
    a.mn = fminf(a.mn, pmn[b]);
    a.mx = fmaxf(a.mx, pmx[b]);
    a.nan += pcnt[2 * b];
    a.inf += pcnt[2 * b + 1];
  }
  a = block_reduce(a);
  if (threadIdx.x != 0) return;
  counts[0] += static_cast<int64_t>(a.nan);
  counts[1] += static_cast<int64_t>(a.inf);
  HistState s{};
  if (!(a.mn <= a.mx)) {
    s.mode = kNothing;
    *st = s;
    return;
  }
  const float plo = *min_val, phi = *max_val;
  const bool seen = !(plo == kInf && phi == -kInf);  // (a half-empty range is corrupt, not empty)
  // std::min(plo, mn) and std::max(phi, mx), NaN behaviour included.
  const float lo = seen ? (a.mn < plo ? a.mn : plo) : a.mn;
  const float hi = seen ? (phi < a.mx ? a.mx : phi) : a.mx;
  s.base = !seen ? kZero : ((lo != plo || hi != phi) ? kRebin : kKeep);
  s.mode = lo == hi ? kOnePoint : kSpread;
  s.old_lo = plo;
  s.old_hi = phi;
  s.lo = lo;
  s.hi = hi;
  s.inv = static_cast<float>(static_cast<double>(bins) /
                             __dsub_rn(static_cast<double>(hi), static_cast<double>(lo)));
  s.finite = static_cast<u64>(numel) - a.nan - a.inf;
  *st = s;
  *min_val = lo;
  *max_val = hi;
}

// Per bin: the rebinned old counts (into `moved`, as hist is still being read), and a zeroed
// counter for this call. The per-bin loops count in 64 bits: bins may be up to 2^31 - 2, and a
// last index plus the grid's stride would pass INT32_MAX.
__global__ void __launch_bounds__(kThreads)
    histogram_prepare_kernel(const float* __restrict__ hist, int32_t bins, int64_t up,
                             const HistState* st, float* moved, u64* counter) {
  const HistState s = *st;
  if (s.mode == kNothing) return;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < bins;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    counter[b] = 0;
    if (s.base == kRebin) {
      moved[b] = rebin_bin(hist, bins, s.old_lo, s.old_hi, s.lo, s.hi, up, static_cast<int32_t>(b));
    }
  }
}

constexpr int kHistThreads = 512;
constexpr int32_t kSharedBins = 12288;  // 48 KiB of 32-bit counters

// Counts the finite x per bin: 32-bit counters in shared memory, folded into the 64-bit global
// counters with one atomic per non-empty bin per block (a block sees < 2^32 elements); bins
// beyond kSharedBins go straight to the global counters.
template <int V>
__global__ void __launch_bounds__(kHistThreads)
    histogram_count_kernel(const float* __restrict__ x, int64_t n, int32_t bins,
                           const HistState* st, u64* counter) {
  extern __shared__ uint32_t sbin[];
  if (st->mode != kSpread) return;
  const float lo = st->lo, inv = st->inv;
  const bool shared = bins <= kSharedBins;
  if (shared) {
    for (int32_t b = threadIdx.x; b < bins; b += blockDim.x) sbin[b] = 0;
    __syncthreads();
  }
  auto add = [&](float v) {
    if (fabsf(v) < kInf) {
      const int32_t b = histogram_bin(v, lo, inv, bins);
      if (shared) atomicAdd(&sbin[b], 1u);
      else atomicAdd(&counter[b], u64{1});
    }
  };
  grid_stride_floats<(V > 1)>(x, n, add);
  if (shared) {
    __syncthreads();
    for (int32_t b = threadIdx.x; b < bins; b += blockDim.x) {
      if (sbin[b] != 0) atomicAdd(&counter[b], static_cast<u64>(sbin[b]));
    }
  }
}

// hist[b] = base + (float)count, base being the kept, zeroed or rebinned old count:
// histogram_cpu's single float32 addition per bin (a one-point range adds to the middle bin only).
__global__ void __launch_bounds__(kThreads)
    histogram_finish_kernel(float* hist, int32_t bins, const HistState* st,
                            const float* __restrict__ moved, const u64* __restrict__ counter) {
  const HistState s = *st;
  if (s.mode == kNothing) return;
  const int32_t mid = middle_bin(bins);
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < bins;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float base = s.base == kKeep ? hist[b] : (s.base == kZero ? 0.0f : moved[b]);
    if (s.mode == kSpread) {
      hist[b] = __fadd_rn(base, static_cast<float>(counter[b]));
    } else {
      hist[b] = b == mid ? __fadd_rn(base, static_cast<float>(s.finite)) : base;
    }
  }
}

// The standalone histogram_rebin: the scalars are read on the device, so they are not
// validated; an empty old range gives zeros (as on the CPU), a new range that is not finite or
// does not contain the old one gives NaN in every bin instead of the CPU's error.
__global__ void __launch_bounds__(kThreads)
    histogram_rebin_kernel(const float* __restrict__ hist, int32_t bins, const float* pl,
                           const float* ph, const float* pnl, const float* pnh, int64_t up,
                           float* out) {
  const float lo = *pl, hi = *ph, nlo = *pnl, nhi = *pnh;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < bins;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float r;
    if (lo == kInf && hi == -kInf) {  // empty; a half-empty range is corrupt: NaN below
      r = 0.0f;
    } else if (!(fabsf(nlo) < kInf && fabsf(nhi) < kInf && nlo <= lo && nhi >= hi && lo <= hi)) {
      r = __int_as_float(0x7fc00000);
    } else if (lo == nlo && hi == nhi) {
      r = hist[b];
    } else {
      r = rebin_bin(hist, bins, lo, hi, nlo, nhi, up, static_cast<int32_t>(b));
    }
    out[b] = r;
  }
}

// Argument checks are common/observe_checks.h, shared with the CPU implementation.

at::Tensor as_float_contiguous(const at::Tensor& x) { return x.to(at::kFloat).contiguous(); }

}  // namespace

// ------------------------------------------------------------------ ops

std::tuple<at::Tensor, at::Tensor> aminmax_cuda(const at::Tensor& x, std::optional<int64_t> axis) {
  check_float_input(x, "x");
  const int64_t a = normalize_axis(axis, x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  const auto opts = x.options().dtype(at::kFloat);
  const int64_t C = a < 0 ? 1 : x.size(a);
  at::Tensor mn = a < 0 ? at::empty({}, opts) : at::empty({C}, opts);
  at::Tensor mx = at::empty_like(mn);
  if (x.numel() == 0) {
    mn.fill_(kInf);
    mx.fill_(-kInf);
    return {mn, mx};
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Partials p = minmax_partials(as_float_contiguous(x), a, /*skip_inf=*/false, stream);
  finish_minmax<Finish::Aminmax>(p, C, mn.data_ptr<float>(), mx.data_ptr<float>(), nullptr, 1.0f,
                                 stream);
  return {mn, mx};
}

void observe_minmax_cuda(const at::Tensor& running_min, const at::Tensor& running_max,
                         const at::Tensor& nonfinite_count, const at::Tensor& x,
                         std::optional<int64_t> axis, std::optional<double> averaging_constant) {
  const int64_t a = check_observe_minmax_args(running_min, running_max, nonfinite_count, x, axis,
                                              averaging_constant);
  const int64_t C = running_min.numel();  // checked: one per channel
  if (x.numel() == 0) return;
  c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Partials p = minmax_partials(as_float_contiguous(x), a, /*skip_inf=*/true, stream);
  float* rmn = running_min.data_ptr<float>();
  float* rmx = running_max.data_ptr<float>();
  int64_t* cnt = nonfinite_count.data_ptr<int64_t>();
  if (averaging_constant.has_value()) {
    finish_minmax<Finish::MovingAverage>(p, C, rmn, rmx, cnt,
                                         static_cast<float>(*averaging_constant), stream);
  } else {
    finish_minmax<Finish::Running>(p, C, rmn, rmx, cnt, 1.0f, stream);
  }
}

void histogram_cuda(const at::Tensor& hist, const at::Tensor& min_val, const at::Tensor& max_val,
                    const at::Tensor& nonfinite_count, const at::Tensor& x, int64_t upsample_rate) {
  check_float_input(x, "x");
  check_histogram_args(hist, min_val, max_val, x, upsample_rate);
  check_counts(nonfinite_count, x);
  check_histogram_no_overlap(hist, min_val, max_val, nonfinite_count, x);
  if (x.numel() == 0) return;
  c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor xc = as_float_contiguous(x);
  const int64_t n = xc.numel();
  const int32_t bins = static_cast<int32_t>(hist.numel());
  const Partials p = minmax_partials(xc, -1, /*skip_inf=*/true, stream);

  at::Tensor state = at::empty({static_cast<int64_t>(sizeof(HistState))}, x.options().dtype(at::kByte));
  at::Tensor moved = at::empty({bins}, x.options().dtype(at::kFloat));
  at::Tensor counter = at::empty({bins}, x.options().dtype(at::kLong));
  auto* st = reinterpret_cast<HistState*>(state.data_ptr());
  u64* cnt = reinterpret_cast<u64*>(counter.data_ptr<int64_t>());

  histogram_range_kernel<<<1, kThreads, 0, stream>>>(
      p.mn.data_ptr<float>(), p.mx.data_ptr<float>(),
      reinterpret_cast<const u64*>(p.cnt.data_ptr<int64_t>()), p.count_blocks, n, bins,
      min_val.data_ptr<float>(), max_val.data_ptr<float>(), nonfinite_count.data_ptr<int64_t>(), st);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const unsigned bin_grid = grid_for(bins);
  histogram_prepare_kernel<<<bin_grid, kThreads, 0, stream>>>(
      hist.data_ptr<float>(), bins, upsample_rate, st, moved.data_ptr<float>(), cnt);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Two blocks of 512 per SM: enough bytes in flight, few blocks to fold into the counters.
  const float* px = xc.data_ptr<float>();
  const int V = aligned16(px) ? 16 : 1;
  const int64_t need = ((n + V - 1) / V + kHistThreads - 1) / kHistThreads;
  // ... and at least n / 2^31 blocks, so that a block's 32-bit shared counters cannot overflow.
  const int64_t min_grid = (n >> 31) + 1;
  const unsigned grid = static_cast<unsigned>(std::max<int64_t>(
      min_grid, std::min<int64_t>(need, static_cast<int64_t>(sm_count()) * 2)));
  const size_t smem = bins <= kSharedBins ? bins * sizeof(uint32_t) : 0;
  if (V == 16) {
    histogram_count_kernel<16><<<grid, kHistThreads, smem, stream>>>(px, n, bins, st, cnt);
  } else {
    histogram_count_kernel<1><<<grid, kHistThreads, smem, stream>>>(px, n, bins, st, cnt);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  histogram_finish_kernel<<<bin_grid, kThreads, 0, stream>>>(hist.data_ptr<float>(), bins, st,
                                                             moved.data_ptr<float>(), cnt);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor histogram_rebin_cuda(const at::Tensor& hist, const at::Tensor& min_val,
                                const at::Tensor& max_val, const at::Tensor& new_min,
                                const at::Tensor& new_max, int64_t upsample_rate) {
  TORCH_CHECK(hist.defined() && hist.scalar_type() == at::kFloat && hist.dim() == 1 &&
                  hist.numel() >= 1,
              "argument 'hist' must be a 1-D float32 tensor with at least one bin");
  TORCH_CHECK(hist.numel() <= std::numeric_limits<int32_t>::max() - 1,
              "argument 'hist' has too many bins: ", hist.numel());
  check_running(min_val, "min_val", hist, 1);
  check_running(max_val, "max_val", hist, 1);
  check_running(new_min, "new_min", hist, 1);
  check_running(new_max, "new_max", hist, 1);
  check_upsample_rate(upsample_rate, hist.numel());
  c10::cuda::CUDAGuard guard(hist.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor h = hist.contiguous();
  at::Tensor out = at::empty_like(h);
  const int32_t bins = static_cast<int32_t>(h.numel());
  histogram_rebin_kernel<<<grid_for(bins), kThreads, 0, stream>>>(
      h.data_ptr<float>(), bins, min_val.data_ptr<float>(), max_val.data_ptr<float>(),
      new_min.data_ptr<float>(), new_max.data_ptr<float>(), upsample_rate, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY_IMPL(torchquant, CUDA, m) {
  m.impl("aminmax", &aminmax_cuda);
  m.impl("observe_minmax_", &observe_minmax_cuda);
  m.impl("histogram_", &histogram_cuda);
  m.impl("histogram_rebin", &histogram_rebin_cuda);
}

}  // namespace cuda
}  // namespace torchquant
