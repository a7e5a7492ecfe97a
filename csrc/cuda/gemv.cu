// Small-M int8 GEMM (M <= 32): a GEMV-style kernel, memory-bound on the weight.
//
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

}  // namespace

void launch_gemv(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return;
  p.x_xor ? launch_xor<true>(p, e, stream) : launch_xor<false>(p, e, stream);
}

}  // namespace cuda
}  // namespace torchquant
