// Small-M int8 GEMMs, memory-bound on the weight: a dp4a GEMV (M <= 32) and a tensor-core
// kernel (M <= 64, sm_80 and later), both with the epilogue fused.
//
// The dp4a GEMV:
// A block owns kRows consecutive weight rows (outputs n) and splits the whole K among its 256
// threads in 16-byte chunks, so each weight byte is loaded once, with 16-byte loads, and kRows
// independent loads are in flight per thread. Activations (M x K, small) come from L2/L1.
// Partial sums are reduced across the block (warp shuffles, then shared memory) and the
// epilogue is applied by the thread that holds the final sum: one launch, no workspace.
// Integer sums are exact, so the split of K changes nothing in the result.
#include "cuda/common.cuh"
#include "cuda/gemm.cuh"

namespace torchquant {
namespace cuda {
namespace {

constexpr int kRows = 8;
constexpr int kGemvThreads = 256;
constexpr int kWarps = kGemvThreads / 32;

__device__ __forceinline__ int32_t dot16(const int4& a, const int4& b, int32_t acc) {
  acc = __dp4a(a.x, b.x, acc);
  acc = __dp4a(a.y, b.y, acc);
  acc = __dp4a(a.z, b.z, acc);
  return __dp4a(a.w, b.w, acc);
}

// kMG: activation rows per pass (1 for M == 1, so that M == 1 carries no idle accumulators).
template <int kMG, bool kXor>
__global__ void __launch_bounds__(kGemvThreads)
    gemv_kernel(const int8_t* __restrict__ x, int64_t ldx, int64_t M,
                const int8_t* __restrict__ w, int64_t ldw, int64_t N, int64_t Kp, Epilogue e) {
  __shared__ int32_t partial[kWarps][kMG * kRows];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t chunks = Kp / 16;
  const int rows = static_cast<int>(N - n0 < kRows ? N - n0 : kRows);

  for (int64_t m0 = 0; m0 < M; m0 += kMG) {
    int32_t acc[kMG][kRows];
#pragma unroll
    for (int i = 0; i < kMG; ++i)
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[i][r] = 0;

    for (int64_t c = tid; c < chunks; c += kGemvThreads) {
      int4 wv[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        wv[r] = r < rows ? __ldg(reinterpret_cast<const int4*>(w + (n0 + r) * ldw + c * 16))
                         : make_int4(0, 0, 0, 0);
      }
#pragma unroll
      for (int i = 0; i < kMG; ++i) {
        if (m0 + i < M) {
          int4 xv = __ldg(reinterpret_cast<const int4*>(x + (m0 + i) * ldx + c * 16));
          if (kXor) {  // uint8 u -> int8 (u - 128): flip the top bit of each byte
            xv.x ^= 0x80808080;
            xv.y ^= 0x80808080;
            xv.z ^= 0x80808080;
            xv.w ^= 0x80808080;
          }
#pragma unroll
          for (int r = 0; r < kRows; ++r) acc[i][r] = dot16(xv, wv[r], acc[i][r]);
        }
      }
    }

#pragma unroll
    for (int i = 0; i < kMG; ++i) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        int32_t v = acc[i][r];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0) partial[warp][i * kRows + r] = v;
      }
    }
    __syncthreads();
    if (tid < kMG * kRows) {
      int32_t sum = 0;
#pragma unroll
      for (int wi = 0; wi < kWarps; ++wi) sum += partial[wi][tid];
      const int i = tid / kRows, r = tid % kRows;
      if (m0 + i < M && r < rows) epilogue_store(e, m0 + i, n0 + r, sum);
    }
    __syncthreads();  // partial[] is rewritten by the next pass
  }
}

template <bool kXor>
void launch_xor(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>((p.N + kRows - 1) / kRows);
  if (p.M == 1) {
    gemv_kernel<1, kXor><<<grid, kGemvThreads, 0, stream>>>(p.x, p.ldx, p.M, p.w, p.ldw, p.N, p.Kp, e);
  } else if (p.M <= 4) {
    gemv_kernel<4, kXor><<<grid, kGemvThreads, 0, stream>>>(p.x, p.ldx, p.M, p.w, p.ldw, p.N, p.Kp, e);
  } else {
    gemv_kernel<8, kXor><<<grid, kGemvThreads, 0, stream>>>(p.x, p.ldx, p.M, p.w, p.ldw, p.N, p.Kp, e);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------------ tensor-core small-M kernel
// mma.sync m16n8k32 (int8 in, int32 accumulate; sm_80 and later). The weight rows play the
// MMA's M (16 per block) and the activation rows its N (8 per MMA), so a block computes
// D^T[16, M] = W[16 rows] X^T. Integer dot products do not depend on the order of k, so the
// k index inside each 64-byte chunk is permuted to suit 16-byte loads: lane (g = lane / 4,
// t = lane % 4) loads bytes [t*16, t*16 + 16) of weight rows g and g + 8 and of activation
// row g, and feeds bytes 0..7 to one MMA and bytes 8..15 to a second, taking the fragments'
// 4-byte groups in the same order from A and from B. The chunks of K are dealt round-robin to
// the block's warps; their partial tiles are summed in shared memory and the epilogue runs
// once per output.
constexpr int kMmaWarps = 8;
constexpr int kMmaRows = 16;

__device__ __forceinline__ void mma_s8(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                       uint32_t a3, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();  // the host never picks this kernel below compute capability 8.0
#endif
}

// kMG: groups of 8 activation rows (M <= 8 * kMG).
template <int kMG, bool kXor>
__global__ void __launch_bounds__(kMmaWarps * 32)
    gemv_mma_kernel(const int8_t* __restrict__ x, int64_t ldx, int64_t M,
                    const int8_t* __restrict__ w, int64_t ldw, int64_t N, int64_t Kp, Epilogue e) {
  __shared__ int32_t partial[kMmaWarps][kMG][32][4];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kMmaRows;
  const bool lo_ok = n0 + g < N, hi_ok = n0 + g + 8 < N;
  const int64_t chunks = (Kp + 63) / 64;
  const int4 zero = make_int4(0, 0, 0, 0);

  int32_t acc[kMG][4];
#pragma unroll
  for (int i = 0; i < kMG; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0;

#pragma unroll 2
  for (int64_t c = warp; c < chunks; c += kMmaWarps) {
    const int64_t k = c * 64 + t * 16;
    const bool k_ok = k < Kp;  // Kp % 16 == 0: the lane's whole 16 bytes are in or out
    const int4 wl = (lo_ok && k_ok) ? __ldg(reinterpret_cast<const int4*>(w + (n0 + g) * ldw + k)) : zero;
    const int4 wh = (hi_ok && k_ok) ? __ldg(reinterpret_cast<const int4*>(w + (n0 + g + 8) * ldw + k)) : zero;
    int4 xv[kMG];
#pragma unroll
    for (int i = 0; i < kMG; ++i) {
      const int64_t m = i * 8 + g;
      xv[i] = (m < M && k_ok) ? __ldg(reinterpret_cast<const int4*>(x + m * ldx + k)) : zero;
      if (kXor) {  // uint8 u -> int8 (u - 128); rows past M and k past Kp meet zero weights or are dropped
        xv[i].x ^= 0x80808080;
        xv[i].y ^= 0x80808080;
        xv[i].z ^= 0x80808080;
        xv[i].w ^= 0x80808080;
      }
    }
#pragma unroll
    for (int i = 0; i < kMG; ++i) {
      mma_s8(acc[i], wl.x, wh.x, wl.y, wh.y, xv[i].x, xv[i].y);
      mma_s8(acc[i], wl.z, wh.z, wl.w, wh.w, xv[i].z, xv[i].w);
    }
  }

#pragma unroll
  for (int i = 0; i < kMG; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) partial[warp][i][lane][r] = acc[i][r];
  __syncthreads();
  // Output (weight row nl, activation row m) sits in lane (nl % 8) * 4 + (m % 8) / 2, register
  // (nl / 8) * 2 + m % 2 of group m / 8 (the m16n8 accumulator layout).
  for (int idx = threadIdx.x; idx < kMmaRows * kMG * 8; idx += kMmaWarps * 32) {
    const int nl = idx % kMmaRows, m = idx / kMmaRows;
    const int i = m >> 3, mm = m & 7;
    const int ln = (nl & 7) * 4 + (mm >> 1), r = ((nl >> 3) << 1) | (mm & 1);
    int32_t sum = 0;
#pragma unroll
    for (int wi = 0; wi < kMmaWarps; ++wi) sum += partial[wi][i][ln][r];
    if (m < M && n0 + nl < N) epilogue_store(e, m, n0 + nl, sum);
  }
}

template <bool kXor>
void launch_mma_xor(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>((p.N + kMmaRows - 1) / kMmaRows);
  const int threads = kMmaWarps * 32;
  if (p.M <= 8) {
    gemv_mma_kernel<1, kXor><<<grid, threads, 0, stream>>>(p.x, p.ldx, p.M, p.w, p.ldw, p.N, p.Kp, e);
  } else if (p.M <= 16) {
    gemv_mma_kernel<2, kXor><<<grid, threads, 0, stream>>>(p.x, p.ldx, p.M, p.w, p.ldw, p.N, p.Kp, e);
  } else if (p.M <= 32) {
    gemv_mma_kernel<4, kXor><<<grid, threads, 0, stream>>>(p.x, p.ldx, p.M, p.w, p.ldw, p.N, p.Kp, e);
  } else {
    gemv_mma_kernel<8, kXor><<<grid, threads, 0, stream>>>(p.x, p.ldx, p.M, p.w, p.ldw, p.N, p.Kp, e);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool mma_supported() {
  static thread_local int cached_dev = -1;
  static thread_local bool ok = false;
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev != cached_dev) {
    int major = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    // The code that runs must have been compiled for sm_80 or later too: a build for an older
    // virtual architecture (PTX JIT-compiled on this device) holds the kernel's trap instead.
    cudaFuncAttributes attr{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, gemv_mma_kernel<1, false>));
    ok = major >= 8 && attr.ptxVersion >= 80 && attr.binaryVersion >= 80;
    cached_dev = dev;
  }
  return ok;
}

void launch_gemv_mma(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  TORCH_CHECK(p.M <= kMmaMaxM, "internal: the tensor-core small-M kernel takes M <= ", kMmaMaxM,
              ", got ", p.M);
  TORCH_CHECK(mma_supported(), "internal: the tensor-core small-M kernel needs compute capability 8.0");
  if (p.M == 0 || p.N == 0) return;
  p.x_xor ? launch_mma_xor<true>(p, e, stream) : launch_mma_xor<false>(p, e, stream);
}

void launch_gemv(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return;
  p.x_xor ? launch_xor<true>(p, e, stream) : launch_xor<false>(p, e, stream);
}

}  // namespace cuda
}  // namespace torchquant
