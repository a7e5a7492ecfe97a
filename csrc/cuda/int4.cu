// CUDA int4 weight-only Linear (docs/quantization.md, "int4 weight-only"). Float activations
// (float32 / bfloat16 / float16) are multiplied in float32 by weights dequantized in registers,
// w = (q - z) * s; no activation rounding, so the result is within the float-rounding part of
// torchquant.int4.reference.error_bound of dequantize-then-matmul (it is not the CPU kernels'
// int8-activation result).
//
// Layout on the GPU (int4_pack_weight_cuda): w_packed uint8 [N, Kp / 2], the portable layout
// padded to whole groups (Kp = G * group_size; padded values q = z add nothing); w_qp int32
// [N, G] zero points; w_scale float32 [N, G].
//
// Kernels: for M <= 8 a GEMV-style kernel, one warp per output channel streaming its row of
// packed weights once (4 bytes = 8 weights per lane per step, coalesced) against all M rows;
// for larger M a shared-memory tiled kernel (64 x 64 outputs per block) that dequantizes a
// 32-wide K slice of the weight tile once and reuses it for 64 rows; and, for bfloat16 / float16
// activations with group_size % 32 == 0 on sm_80 and later, a tensor-core kernel (int4_mma_kernel,
// below). TORCHQUANT_CUDA_INT4=auto|gemv|tiled|mma (read per call) forces a kernel where it
// applies (the others fall back to the tiled kernel); auto keeps the tiled kernel for M > 8 until
// the tensor-core one has been measured on a GPU (docs/cuda.md).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "cuda/common.cuh"
#include "cuda/gemm.cuh"
#include "ops.h"

namespace torchquant {
namespace cuda {
namespace {

template <class T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f<double>(double v) { return static_cast<float>(v); }
template <>
__device__ __forceinline__ float to_f<at::Half>(at::Half v) { return __half2float(*reinterpret_cast<const __half*>(&v)); }
template <>
__device__ __forceinline__ float to_f<at::BFloat16>(at::BFloat16 v) {
  return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(&v));
}

constexpr int kMaxGemvRows = 8;

template <class T, int MR>
__global__ void int4_gemv_kernel(const T* __restrict__ x, int64_t ldx, const uint8_t* __restrict__ w,
                                 const int32_t* __restrict__ zp, const float* __restrict__ scale,
                                 const float* __restrict__ bias, float* __restrict__ out, int M, int64_t N,
                                 int64_t K, int64_t Kp, int64_t G, int64_t gs) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (n >= N) return;
  const uint32_t* wrow = reinterpret_cast<const uint32_t*>(w + n * (Kp / 2));
  const int64_t words = Kp / 8;
  float acc[MR];
#pragma unroll
  for (int r = 0; r < MR; ++r) acc[r] = 0.0f;
  for (int64_t i = lane; i < words; i += 32) {
    const uint32_t v = __ldg(wrow + i);
    const int64_t k0 = i * 8;
    const int64_t g = k0 / gs;
    const float s = __ldg(scale + n * G + g);
    const float z = static_cast<float>(__ldg(zp + n * G + g));
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t k = k0 + j;
      if (k >= K) break;
      const float wv = (static_cast<float>((v >> (4 * j)) & 0xF) - z) * s;
#pragma unroll
      for (int r = 0; r < MR; ++r)
        if (r < M) acc[r] = __fmaf_rn(to_f<T>(x[r * ldx + k]), wv, acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < MR; ++r) {
    float a = acc[r];
    for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
    if (lane == 0 && r < M) out[r * N + n] = bias != nullptr ? a + bias[n] : a;
  }
}

constexpr int kTM = 64, kTN = 64, kTK = 32;

// 256 threads, each 4 x 4 outputs of a 64 x 64 tile.
template <class T>
__global__ void int4_tiled_kernel(const T* __restrict__ x, int64_t ldx, const uint8_t* __restrict__ w,
                                  const int32_t* __restrict__ zp, const float* __restrict__ scale,
                                  const float* __restrict__ bias, float* __restrict__ out, int64_t M, int64_t N,
                                  int64_t K, int64_t Kp, int64_t G, int64_t gs) {
  __shared__ float xs[kTK][kTM + 1];
  __shared__ float ws[kTK][kTN + 1];
  const int tid = threadIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTM, n0 = static_cast<int64_t>(blockIdx.x) * kTN;
  const int tm = (tid / 16) * 4, tn = (tid % 16) * 4;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kTK) {
    for (int e = tid; e < kTM * kTK; e += blockDim.x) {
      const int mm = e / kTK, kk = e % kTK;
      const int64_t m = m0 + mm, k = k0 + kk;
      xs[kk][mm] = (m < M && k < K) ? to_f<T>(x[m * ldx + k]) : 0.0f;
    }
    for (int e = tid; e < kTN * kTK; e += blockDim.x) {
      const int nn = e / kTK, kk = e % kTK;
      const int64_t n = n0 + nn, k = k0 + kk;
      float v = 0.0f;
      if (n < N && k < K) {
        const uint8_t b = w[n * (Kp / 2) + k / 2];
        const int q = (k & 1) ? (b >> 4) : (b & 0xF);
        const int64_t g = k / gs;
        v = static_cast<float>(q - zp[n * G + g]) * scale[n * G + g];
      }
      ws[kk][nn] = v;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kTK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = xs[kk][tm + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = ws[kk][tn + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __fmaf_rn(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + tm + i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tn + j;
      if (n < N) out[m * N + n] = bias != nullptr ? acc[i][j] + bias[n] : acc[i][j];
    }
  }
}

// ------------------------------------------------------------------ tensor-core kernel
// mma.sync m16n8k16 with bfloat16 / float16 inputs and float32 accumulation (sm_80 and later).
// The weights enter the MMA as (q - z), an integer in [-15, 15] that both 16-bit formats hold
// exactly, and the activations as given, so every product is exact; the group's partial sums
// (one 32-wide K slice lies in one group: group_size % 32 == 0) are scaled once per group,
// total = fma(partial, s, total). Dequantization happens once per weight per block, when the
// slice is written to shared memory.
//
// Block: 64 activation rows x 64 output channels, 4 warps in a 2 x 2 grid, each 32 x 32 outputs
// (2 m16 x 4 n8 MMA tiles). Fragment layouts (PTX ISA, m16n8k16, 16-bit inputs), with
// g = lane / 4 and t = lane % 4: A a0 = (row g, k 2t..2t+1), a1 = (row g+8, same k), a2 = (row g,
// k 2t+8..2t+9), a3 = (row g+8, k 2t+8..); B b0 = (k 2t..2t+1, col g), b1 = (k 2t+8..2t+9, col g);
// C c0, c1 = (row g, col 2t, 2t+1), c2, c3 = (row g+8, col 2t, 2t+1). Shared rows are padded by 8
// elements (80 bytes) so that the eight rows a fragment load touches fall in distinct banks.
constexpr int kMM = 64, kMN = 64, kMK = 32, kMPad = kMK + 8;

template <class T>
struct MmaType;
template <>
struct MmaType<at::BFloat16> {
  __device__ static __forceinline__ uint16_t from_int(int v) {
    const __nv_bfloat16 h = __float2bfloat16_rn(static_cast<float>(v));
    return *reinterpret_cast<const uint16_t*>(&h);
  }
  __device__ static __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();  // the host picks this kernel only on compute capability 8.0 and later
#endif
  }
};
template <>
struct MmaType<at::Half> {
  __device__ static __forceinline__ uint16_t from_int(int v) {
    const __half h = __int2half_rn(v);
    return *reinterpret_cast<const uint16_t*>(&h);
  }
  __device__ static __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
  }
};

__device__ __forceinline__ uint32_t lds32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// kVec: x's rows start 16-byte aligned and K % 8 == 0, so 8 activations load as one 16-byte unit.
template <class T, bool kVec>
__global__ void __launch_bounds__(128)
    int4_mma_kernel(const T* __restrict__ x, int64_t ldx, const uint8_t* __restrict__ w,
                    const int32_t* __restrict__ zp, const float* __restrict__ scale,
                    const float* __restrict__ bias, float* __restrict__ out, int64_t M, int64_t N, int64_t K,
                    int64_t Kp, int64_t G, int64_t gs) {
  __shared__ __align__(16) uint16_t xs[kMM][kMPad];
  __shared__ __align__(16) uint16_t ws[kMN][kMPad];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kMM, n0 = static_cast<int64_t>(blockIdx.x) * kMN;
  const uint16_t* xr = reinterpret_cast<const uint16_t*>(x);
  float part[2][4][4], total[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) part[i][j][c] = total[i][j][c] = 0.0f;

  for (int64_t k0 = 0; k0 < K; k0 += kMK) {
    // Activations: 64 rows x 32 k, zeros outside [0, M) x [0, K).
    if (kVec) {
      for (int e = tid; e < kMM * (kMK / 8); e += blockDim.x) {
        const int mm = e / (kMK / 8), kk = (e % (kMK / 8)) * 8;
        const int64_t m = m0 + mm, k = k0 + kk;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (m < M && k < K) v = *reinterpret_cast<const uint4*>(xr + m * ldx + k);
        *reinterpret_cast<uint4*>(&xs[mm][kk]) = v;
      }
    } else {
      for (int e = tid; e < kMM * kMK; e += blockDim.x) {
        const int mm = e / kMK, kk = e % kMK;
        const int64_t m = m0 + mm, k = k0 + kk;
        xs[mm][kk] = (m < M && k < K) ? xr[m * ldx + k] : static_cast<uint16_t>(0);
      }
    }
    // Weights: 64 channels x 32 k = 16 packed bytes per channel (16-byte aligned: Kp % 32 == 0),
    // written as (q - z); channels outside [0, N) as 0. Values past K are padding q = z: 0.
    const int64_t grp = k0 / gs;
    if (tid < kMN) {
      const int64_t n = n0 + tid;
      if (n < N) {
        const uint4 p = __ldg(reinterpret_cast<const uint4*>(w + n * (Kp / 2) + k0 / 2));
        const int z = __ldg(zp + n * G + grp);
        const uint32_t words[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
        for (int b = 0; b < 4; ++b)
#pragma unroll
          for (int j = 0; j < 8; ++j)
            ws[tid][b * 8 + j] = MmaType<T>::from_int(static_cast<int>((words[b] >> (4 * j)) & 0xF) - z);
      } else {
#pragma unroll
        for (int kk = 0; kk < kMK; ++kk) ws[tid][kk] = 0;
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kMK; kk += 16) {
      uint32_t a[2][4], b[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = wm + i * 16 + g;
        a[i][0] = lds32(&xs[r][kk + 2 * t]);
        a[i][1] = lds32(&xs[r + 8][kk + 2 * t]);
        a[i][2] = lds32(&xs[r][kk + 2 * t + 8]);
        a[i][3] = lds32(&xs[r + 8][kk + 2 * t + 8]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = wn + j * 8 + g;
        b[j][0] = lds32(&ws[c][kk + 2 * t]);
        b[j][1] = lds32(&ws[c][kk + 2 * t + 8]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) MmaType<T>::mma(part[i][j], a[i], b[j][0], b[j][1]);
    }
    __syncthreads();  // the next slice overwrites xs / ws
    if ((k0 + kMK) % gs == 0 || k0 + kMK >= K) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t n = n0 + wn + j * 8 + 2 * t;
        const float s0 = n < N ? __ldg(scale + n * G + grp) : 0.0f;
        const float s1 = n + 1 < N ? __ldg(scale + (n + 1) * G + grp) : 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          total[i][j][0] = __fmaf_rn(part[i][j][0], s0, total[i][j][0]);
          total[i][j][1] = __fmaf_rn(part[i][j][1], s1, total[i][j][1]);
          total[i][j][2] = __fmaf_rn(part[i][j][2], s0, total[i][j][2]);
          total[i][j][3] = __fmaf_rn(part[i][j][3], s1, total[i][j][3]);
#pragma unroll
          for (int c = 0; c < 4; ++c) part[i][j][c] = 0.0f;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t m = m0 + wm + i * 16 + g + (c >= 2 ? 8 : 0);
        const int64_t n = n0 + wn + j * 8 + 2 * t + (c & 1);
        if (m < M && n < N) out[m * N + n] = bias != nullptr ? total[i][j][c] + bias[n] : total[i][j][c];
      }
    }
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The most activation rows one launch of the tiled / tensor-core kernel takes: 65535 (the largest
// grid.y) row tiles of 64.
static_assert(kTM == kMM, "the tiled and tensor-core kernels share the row slicing");
constexpr int64_t kMaxRowsPerLaunch = int64_t{65535} * kTM;

enum class Int4Path { Auto, Gemv, Tiled, Mma };

Int4Path forced_int4_path() {
  return static_cast<Int4Path>(env_choice("TORCHQUANT_CUDA_INT4", {"auto", "gemv", "tiled", "mma"}));
}

// The kernel for M rows of `dtype` activations: the GEMV for M <= kMaxGemvRows (auto, or forced
// gemv); the tensor-core kernel when forced and it applies (16-bit activations, group_size a
// multiple of 32, sm_80+); the tiled kernel otherwise.
Int4Path int4_path_for(int64_t M, at::ScalarType dtype, int64_t group_size) {
  const Int4Path forced = forced_int4_path();
  if (forced == Int4Path::Tiled) return Int4Path::Tiled;
  if (forced == Int4Path::Mma) {
    const bool ok = (dtype == at::kBFloat16 || dtype == at::kHalf) && group_size % kMK == 0 && mma_supported();
    return ok ? Int4Path::Mma : Int4Path::Tiled;
  }
  return M <= kMaxGemvRows ? Int4Path::Gemv : Int4Path::Tiled;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> int4_pack_weight_cuda(const at::Tensor& qweight,
                                                                     const at::Tensor& scale,
                                                                     const at::Tensor& zero_point,
                                                                     int64_t in_features, int64_t group_size) {
  const int64_t G = check_int4_format(qweight, scale, zero_point, in_features, group_size);
  const c10::cuda::CUDAGuard guard(qweight.device());
  const int64_t N = qweight.size(0), K = in_features, Kp = G * group_size;
  // Always fresh copies (copy=true): s and z are returned, and the schema's outputs may not
  // alias its inputs; .to() / .contiguous() would return `scale` itself for a contiguous float32
  // scale (an int32 zero_point likewise), so w_scale / w_qp would share the caller's storage.
  const at::Tensor s = scale.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
  // Packing happens once per load: a host sync for the value checks is affordable here. The
  // scales first, then the zero points, as the CPU's packing checks them; the zero points before
  // their int32 copy (an int64 2^32 + 3 would wrap to 3), as the CPU checks them in int64.
  // A value out of range is named on the host, by channel and group, in the CPU's words.
  if ((s.le(0) | s.isinf() | s.isnan()).any().item<bool>()) {
    const at::Tensor sh = s.cpu();
    check_int4_scale_values(scale.cpu(), sh.const_data_ptr<float>(), G);
  }
  if ((zero_point.lt(0) | zero_point.gt(15)).any().item<bool>()) {
    const at::Tensor zh = zero_point.cpu().to(at::kLong).contiguous();
    const int64_t* pz = zh.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < zh.numel(); ++i)
      TORCH_CHECK(pz[i] >= 0 && pz[i] <= 15, "argument 'zero_point' must lie in [0, 15], got ", pz[i],
                  " at channel ", i / std::max<int64_t>(G, 1), ", group ", i % std::max<int64_t>(G, 1));
  }
  const at::Tensor z = zero_point.to(at::kInt, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
  const at::Tensor qw = qweight.contiguous();
  // Explicit sizes: reshape({N, -1}) of an empty weight (N = 0) is ambiguous and raises.
  at::Tensor q = at::stack({qw.bitwise_and(0x0F), qw.bitwise_right_shift(4)}, -1).reshape({N, 2 * qw.size(1)});
  q = q.narrow(1, 0, K);
  if (Kp > K) {
    const at::Tensor zfull = z.to(at::kByte).repeat_interleave(group_size, 1).narrow(1, K, Kp - K);
    q = at::cat({q, zfull}, 1);
  }
  at::Tensor packed = q.slice(1, 0, Kp, 2).bitwise_or(q.slice(1, 1, Kp, 2).bitwise_left_shift(4)).contiguous();
  return {packed, z, s};
}

at::Tensor linear_int4_cuda(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_qp,
                            const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                            int64_t in_features, int64_t out_features, int64_t group_size) {
  TORCH_CHECK(x.defined() && at::isFloatingType(x.scalar_type()), "argument 'x' must be a floating-point tensor");
  TORCH_CHECK(x.dim() >= 1, "argument 'x' must have at least 1 dimension [..., K], got a scalar");
  const int64_t K = x.size(-1), N = out_features;
  TORCH_CHECK(K == in_features, "argument 'x' has K = ", K,
              " (its last dimension) but the weight was packed for in_features = ", in_features);
  TORCH_CHECK(group_size >= 8 && group_size <= 2048 && group_size % 8 == 0,
              "argument 'group_size' must be a multiple of 8 in [8, 2048], got ", group_size);
  const int64_t G = ceil_div(K, group_size), Kp = G * group_size;
  check_same_device(x, "x", w_packed, "w_packed");
  check_same_device(x, "x", w_qp, "w_qp");
  check_same_device(x, "x", w_scale, "w_scale");
  TORCH_CHECK(w_packed.scalar_type() == at::kByte && w_packed.dim() == 2 && w_packed.size(0) == N &&
                  w_packed.size(1) == Kp / 2 && w_packed.is_contiguous(),
              "argument 'w_packed' must be a contiguous uint8 tensor [", N, ", ", Kp / 2,
              "] (int4_pack_weight on the GPU), got shape ", w_packed.sizes());
  TORCH_CHECK(w_qp.scalar_type() == at::kInt && w_qp.dim() == 2 && w_qp.size(0) == N && w_qp.size(1) == G &&
                  w_qp.is_contiguous(),
              "argument 'w_qp' must be a contiguous int32 tensor [", N, ", ", G, "], got shape ", w_qp.sizes());
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.dim() == 2 && w_scale.size(0) == N &&
                  w_scale.size(1) == G && w_scale.is_contiguous(),
              "argument 'w_scale' must be a contiguous float32 tensor [", N, ", ", G, "], got shape ",
              w_scale.sizes());
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    check_same_device(x, "x", *bias, "bias");
    TORCH_CHECK(at::isFloatingType(bias->scalar_type()) && bias->dim() == 1 && bias->size(0) == N,
                "argument 'bias' must be a floating-point tensor of shape [", N, "], got dtype ",
                bias->scalar_type(), " and shape ", bias->sizes());
    b = bias->to(at::kFloat).contiguous();
  }
  const c10::cuda::CUDAGuard guard(x.device());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  const at::ScalarType odt = x.scalar_type();
  at::Tensor xc = x;
  if (odt != at::kFloat && odt != at::kHalf && odt != at::kBFloat16) xc = x.to(at::kFloat);
  xc = xc.contiguous();
  int64_t M = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) M *= x.size(d);
  at::Tensor out = at::empty(shape, x.options().dtype(at::kFloat));
  if (M == 0 || N == 0) return out.to(odt);
  if (K == 0) {
    if (b.defined()) out.copy_(b.expand_as(out)); else out.zero_();
    return out.to(odt);
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  const float* pb = b.defined() ? b.const_data_ptr<float>() : nullptr;
  // The GEMV reads w_packed's rows as 4-byte words and the tensor-core kernel as 16-byte units
  // (rows of Kp / 2 bytes, a multiple of 4, and of 16 where group_size % 32 == 0): both assume
  // the data starts 16-byte aligned. A contiguous view starting elsewhere (an offset into a
  // larger buffer) is copied once to a fresh, aligned allocation.
  const at::Tensor wp =
      aligned16(w_packed.const_data_ptr()) ? w_packed : w_packed.clone(at::MemoryFormat::Contiguous);
  const uint8_t* pw = wp.const_data_ptr<uint8_t>();
  const Int4Path path = int4_path_for(M, xc.scalar_type(), group_size);
  if (path == Int4Path::Mma) {
    const bool vec = K % 8 == 0 && aligned16(xc.const_data_ptr());
    AT_DISPATCH_REDUCED_FLOATING_TYPES(xc.scalar_type(), "linear_int4_cuda_mma", [&] {
      const scalar_t* px = xc.const_data_ptr<scalar_t>();
      auto kernel = vec ? int4_mma_kernel<scalar_t, true> : int4_mma_kernel<scalar_t, false>;
      // Row tiles on grid.y (at most 65535): M past kMaxRowsPerLaunch runs in slices of rows
      // (mb * K elements keep x's 16-byte alignment: vec needs K % 8 == 0).
      for (int64_t mb = 0; mb < M; mb += kMaxRowsPerLaunch) {
        const int64_t mr = std::min<int64_t>(M - mb, kMaxRowsPerLaunch);
        const dim3 grid(static_cast<unsigned>(ceil_div(N, kMN)), static_cast<unsigned>(ceil_div(mr, kMM)));
        kernel<<<grid, 128, 0, stream>>>(px + mb * K, K, pw, w_qp.const_data_ptr<int32_t>(),
                                         w_scale.const_data_ptr<float>(), pb, out.data_ptr<float>() + mb * N, mr,
                                         N, K, Kp, G, group_size);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
    return out.to(odt);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "linear_int4_cuda", [&] {
    const scalar_t* px = xc.const_data_ptr<scalar_t>();
    if (path == Int4Path::Gemv) {
      constexpr int warps = 8;
      const unsigned grid = static_cast<unsigned>(ceil_div(N, warps));
      int4_gemv_kernel<scalar_t, kMaxGemvRows><<<grid, warps * 32, 0, stream>>>(
          px, K, pw, w_qp.const_data_ptr<int32_t>(),
          w_scale.const_data_ptr<float>(), pb, out.data_ptr<float>(), static_cast<int>(M), N, K, Kp, G,
          group_size);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      // As the tensor-core kernel: row tiles on grid.y, in slices of at most 65535 tiles.
      for (int64_t mb = 0; mb < M; mb += kMaxRowsPerLaunch) {
        const int64_t mr = std::min<int64_t>(M - mb, kMaxRowsPerLaunch);
        const dim3 grid(static_cast<unsigned>(ceil_div(N, kTN)), static_cast<unsigned>(ceil_div(mr, kTM)));
        int4_tiled_kernel<scalar_t><<<grid, 256, 0, stream>>>(
            px + mb * K, K, pw, w_qp.const_data_ptr<int32_t>(),
            w_scale.const_data_ptr<float>(), pb, out.data_ptr<float>() + mb * N, mr, N, K, Kp, G, group_size);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  return odt == at::kFloat ? out : out.to(odt);
}

TORCH_LIBRARY_IMPL(torchquant, CUDA, m) {
  m.impl("int4_pack_weight", &int4_pack_weight_cuda);
  m.impl("linear_int4", &linear_int4_cuda);
}

}  // namespace cuda
}  // namespace torchquant
