// Scalar int8 GEMM: the plain-C++ reference variant, plus the weight packer shared by every
// variant. One output at a time, int64 sums, and the one-element epilogue of gemm_kernels.h.
#include <cstring>

#include "cpu/gemm_kernels.h"

namespace torchquant {
namespace cpu {

void gemm_pack_weight_cols(const int8_t* w, int64_t stride_n, int64_t stride_k, int64_t N,
                           int64_t K, int64_t n0, int64_t n1, int8_t* packed, int32_t* col_sums) {
  const int64_t full = K / 4 * 4, r = K - full;
  // Padding channels of the last panel. With K = 0 there is nothing to pad and `packed` may be
  // null (an empty tensor's data): memset of a null pointer is undefined even for 0 bytes.
  if (K > 0 && n0 % kPanel == 0 && n1 == N && N % kPanel != 0) {
    std::memset(packed + (N / kPanel) * K * kPanel, 0, static_cast<size_t>(K * kPanel));
  }
  for (int64_t n = n0; n < n1; ++n) {
    int8_t* panel = packed + (n / kPanel) * K * kPanel;
    const int64_t c = n % kPanel;
    const int8_t* wn = w + n * stride_n;
    int64_t sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int8_t v = wn[k * stride_k];
      sum += v;
      const int64_t at = k < full ? (k / 4) * 64 + c * 4 + (k % 4) : full * kPanel + c * r + (k - full);
      panel[at] = v;
    }
    col_sums[n] = static_cast<int32_t>(sum);  // |sum| <= 128 * K, K <= kMaxK
  }
}

void gemm_pack_weight(const int8_t* w, int64_t stride_n, int64_t stride_k, int64_t N, int64_t K,
                      int8_t* packed, int32_t* col_sums) {
  gemm_pack_weight_cols(w, stride_n, stride_k, N, K, 0, N, packed, col_sums);
}

int gemm_mr__scalar() { return 1; }

int64_t gemm_task_panels__scalar() { return 4; }

void gemm_compute__scalar(const GemmProblem& p, const void* a, int64_t lda, int64_t m0,
                          int64_t m1, int64_t p0, int64_t p1) {
  const int64_t K = p.K, full = K / 4 * 4, r = K - full;
  const int64_t n1 = p1 * kPanel < p.N ? p1 * kPanel : p.N;
  for (int64_t m = m0; m < m1; ++m) {
    const int32_t zp = p.a_zp_row ? p.a_zp_row[m] : p.a_zp;
    const float a_scale = p.a_scale_row ? p.a_scale_row[m] : p.a_scale;
    const uint8_t* au = static_cast<const uint8_t*>(a) + m * lda;
    const int8_t* as = static_cast<const int8_t*>(a) + m * lda;
    for (int64_t n = p0 * kPanel; n < n1; ++n) {
      const int8_t* panel = p.w + (n / kPanel) * K * kPanel;
      const int64_t c = n % kPanel;
      int64_t acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t x = p.a_unsigned ? int64_t{au[k]} : int64_t{as[k]};
        const int64_t at = k < full ? (k / 4) * 64 + c * 4 + (k % 4) : full * kPanel + c * r + (k - full);
        acc += x * panel[at];
      }
      // acc is the exact sum; the vector kernels' int32 accumulators hold it modulo 2^32.
      const int32_t acc32 = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(acc)));
      gemm_epilogue_one(p, m, n, gemm_correct(acc32, zp, p.col_sums[n]), a_scale);
    }
  }
}

void quantize_rows__scalar(const float* x, int64_t ldx, int64_t rows, int64_t K, int32_t qmin,
                           int32_t qmax, int8_t* q, int64_t ldq, float* scale, int32_t* zp) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * ldx;
    float mn = 0.0f, mx = 0.0f;
    for (int64_t k = 0; k < K; ++k) {  // NaN compares false: ignored
      mn = xr[k] < mn ? xr[k] : mn;
      mx = xr[k] > mx ? xr[k] : mx;
    }
    rowwise_qparams(mn, mx, qmin, qmax, &scale[i], &zp[i]);
    const float inv = 1.0f / scale[i], fzp = static_cast<float>(zp[i]);
    const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
    int8_t* qr = q + i * ldq;
    for (int64_t k = 0; k < K; ++k) {
      qr[k] = static_cast<int8_t>(static_cast<int32_t>(quantize_val(xr[k], inv, fzp, lo, hi)));
    }
  }
}

}  // namespace cpu
}  // namespace torchquant
