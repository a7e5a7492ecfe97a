// Tensor-core int8 convolution: an implicit GEMM on mma.sync m16n8k32 (sm_80 and later).
//
// The GEMM of one group: rows = output pixels (n, od, oh, ow), columns = the group's output
// channels, K = taps * Cin/groups in the packed weight's order (k = tap * Cg + c). A block
// computes 64 pixels x 64 channels; each 32-wide K slice of the activation tile is gathered
// from the channels-last input straight into shared memory (a padded tap reads the activation
// zero point, as the direct kernel does), the weight slice [32 k, 64 channels] of the packed
// [groups, Kg, Ng] weight is transposed into shared memory on the way, and 4 warps (2 x 2, each
// 32 x 32 outputs = 2 m16 x 4 n8 tiles) multiply them on the tensor cores, uint8 or int8
// activations against int8 weights, int32 accumulation. Integer sums do not depend on the order
// of k, so the accumulators equal the direct kernel's, and the epilogue is the same
// epilogue_store: bit-identical results.
//
// Fast gather: when Cg % 32 == 0, C % 16 == 0 and x is 16-byte aligned, a K slice lies inside
// one tap and 32 consecutive channels of a pixel are two 16-byte loads; each thread keeps its
// pixel's coordinates for the whole K loop. Otherwise an element-wise gather.
//
// Fragment layouts (PTX ISA, m16n8k32, 8-bit inputs), g = lane / 4, t = lane % 4: A a0 = (row g,
// k 4t..4t+3), a1 = (row g+8, same k), a2 = (row g, k 4t+16..4t+19), a3 = (row g+8, k 4t+16..);
// B b0 = (k 4t..4t+3, col g), b1 = (k 4t+16..4t+19, col g); C c0, c1 = (row g, cols 2t, 2t+1),
// c2, c3 = (row g+8, cols 2t, 2t+1). Shared rows are 48 bytes, so the eight rows one fragment
// load touches fall in distinct banks.
#include "cuda/conv_mma.h"

namespace torchquant {
namespace cuda {
namespace {

constexpr int kCM = 64, kCN = 64, kCK = 32, kCRow = kCK + 16;

template <bool U>
__device__ __forceinline__ void mma_x8(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if (U) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#else
  __trap();  // the host picks this kernel only on compute capability 8.0 and later
#endif
}

__device__ __forceinline__ uint32_t lds32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

template <bool U, bool kFast>
__global__ void __launch_bounds__(128)
    conv_mma_kernel(const uint8_t* __restrict__ x, const int8_t* __restrict__ w, ConvMmaArgs c, Epilogue e) {
  __shared__ __align__(16) uint8_t xs[kCM][kCRow];
  __shared__ __align__(16) uint8_t ws[kCN][kCRow];
  const ConvGeometry& g = c.g;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, t = lane & 3;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  const int64_t P = c.P;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kCM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kCN;
  const int64_t grp = blockIdx.z;
  const int32_t zp = clamp_int(e.x_zp[0], e.x_zp_lo, e.x_zp_hi);
  const uint8_t zb = static_cast<uint8_t>(zp & 0xFF);
  const uint32_t zp4 = static_cast<uint32_t>(zb) * 0x01010101u;
  const int8_t* wg = w + grp * c.Kg * c.Ng;
  const int64_t cbase = grp * c.Cg;

  // Fast gather: thread -> (pixel row tid / 2, 16-byte half tid % 2), fixed for the K loop.
  const int my_row = tid >> 1, my_half = tid & 1;
  int64_t pn = 0, pod = 0, poh = 0, pow_ = 0;
  const bool pvalid = m0 + my_row < P;
  if (kFast && pvalid) conv_pixel_of(g, m0 + my_row, &pn, &pod, &poh, &pow_);

  int32_t acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0;

  for (int64_t k0 = 0; k0 < c.Kg; k0 += kCK) {
    if (kFast) {
      const int64_t tap = k0 / c.Cg, ci = k0 % c.Cg + my_half * 16;
      const int64_t kw = tap % g.k[2], kh = (tap / g.k[2]) % g.k[1], kd = tap / (g.k[2] * g.k[1]);
      uint4 v = make_uint4(zp4, zp4, zp4, zp4);
      if (pvalid) {
        const int64_t id = pod * g.stride[0] - g.pad[0] + kd * g.dil[0];
        const int64_t ih = poh * g.stride[1] - g.pad[1] + kh * g.dil[1];
        const int64_t iw = pow_ * g.stride[2] - g.pad[2] + kw * g.dil[2];
        if (conv_inside(g, id, ih, iw)) {
          const int64_t at = (((pn * g.in[0] + id) * g.in[1] + ih) * g.in[2] + iw) * g.C + cbase + ci;
          v = __ldg(reinterpret_cast<const uint4*>(x + at));
        }
      }
      *reinterpret_cast<uint4*>(&xs[my_row][my_half * 16]) = v;
    } else {
      for (int el = tid; el < kCM * kCK; el += blockDim.x) {
        const int mm = el / kCK, kk = el % kCK;
        const int64_t m = m0 + mm, k = k0 + kk;
        uint8_t v = 0;  // rows past the last pixel and k past Kg multiply zero weights
        if (m < P && k < c.Kg) {
          int64_t n, od, oh, ow;
          conv_pixel_of(g, m, &n, &od, &oh, &ow);
          const int64_t tap = k / c.Cg, ci = k % c.Cg;
          const int64_t kw = tap % g.k[2], kh = (tap / g.k[2]) % g.k[1], kd = tap / (g.k[2] * g.k[1]);
          const int64_t id = od * g.stride[0] - g.pad[0] + kd * g.dil[0];
          const int64_t ih = oh * g.stride[1] - g.pad[1] + kh * g.dil[1];
          const int64_t iw = ow * g.stride[2] - g.pad[2] + kw * g.dil[2];
          v = conv_inside(g, id, ih, iw) ? x[(((n * g.in[0] + id) * g.in[1] + ih) * g.in[2] + iw) * g.C + cbase + ci]
                                    : zb;
        }
        xs[mm][kk] = v;
      }
    }
    // Weight slice: [k0, k0 + 32) x [j0, j0 + 64) of the group's [Kg, Ng], transposed to [channel][k];
    // zeros past Kg and past Ng. Consecutive threads read consecutive channels (coalesced).
    for (int el = tid; el < kCK * kCN; el += blockDim.x) {
      const int kk = el / kCN, nn = el % kCN;
      const int64_t k = k0 + kk, j = j0 + nn;
      ws[nn][kk] = (k < c.Kg && j < c.Ng) ? static_cast<uint8_t>(wg[k * c.Ng + j]) : uint8_t{0};
    }
    __syncthreads();
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = wm + i * 16 + gq;
      a[i][0] = lds32(&xs[r][4 * t]);
      a[i][1] = lds32(&xs[r + 8][4 * t]);
      a[i][2] = lds32(&xs[r][4 * t + 16]);
      a[i][3] = lds32(&xs[r + 8][4 * t + 16]);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int cn = wn + j * 8 + gq;
      b[j][0] = lds32(&ws[cn][4 * t]);
      b[j][1] = lds32(&ws[cn][4 * t + 16]);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) mma_x8<U>(acc[i][j], a[i], b[j][0], b[j][1]);
    __syncthreads();  // the next slice overwrites xs / ws
  }

  const float inv = epilogue_inv_out_scale(e);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int64_t m = m0 + wm + i * 16 + gq + (q >= 2 ? 8 : 0);
        const int64_t jn = j0 + wn + j * 8 + 2 * t + (q & 1);
        if (m < P && jn < c.Ng) epilogue_store(e, m, grp * c.Ng + jn, acc[i][j][q], inv);
      }
    }
  }
}

}  // namespace

ConvPath conv_path() {
  return static_cast<ConvPath>(env_choice("TORCHQUANT_CUDA_CONV", {"auto", "direct", "mma"}));
}

bool conv_mma_applies(const ConvMmaArgs& c) {
  const int64_t P = c.g.out_pixels();
  return (P + kCM - 1) / kCM <= 0x7FFFFFFF && (c.Ng + kCN - 1) / kCN <= 65535 && c.groups <= 65535 &&
         mma_supported();
}

void launch_conv_mma(const void* x, bool x_uint8, const int8_t* w, const ConvMmaArgs& args, const Epilogue& e,
                     cudaStream_t stream) {
  ConvMmaArgs c = args;
  c.P = c.g.out_pixels();
  const int64_t P = c.P;
  if (P == 0 || c.Ng == 0) return;
  const dim3 grid(static_cast<unsigned>((P + kCM - 1) / kCM), static_cast<unsigned>((c.Ng + kCN - 1) / kCN),
                  static_cast<unsigned>(c.groups));
  const bool fast = c.Cg % kCK == 0 && c.g.C % 16 == 0 && aligned16(x);
  const uint8_t* px = static_cast<const uint8_t*>(x);
  if (x_uint8) {
    if (fast) conv_mma_kernel<true, true><<<grid, 128, 0, stream>>>(px, w, c, e);
    else conv_mma_kernel<true, false><<<grid, 128, 0, stream>>>(px, w, c, e);
  } else {
    if (fast) conv_mma_kernel<false, true><<<grid, 128, 0, stream>>>(px, w, c, e);
    else conv_mma_kernel<false, false><<<grid, 128, 0, stream>>>(px, w, c, e);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace torchquant
