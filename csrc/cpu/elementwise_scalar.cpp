// Scalar elementwise kernels: the one-element oracle the AVX2 and CUDA variants reproduce.
#include "common/quant_math.h"
#include "cpu/elementwise_kernels.h"

namespace torchquant {
namespace cpu {
namespace {

inline int32_t load(const uint8_t* p, bool is_unsigned) {
  return is_unsigned ? static_cast<int32_t>(*p) : static_cast<int32_t>(static_cast<int8_t>(*p));
}

// y -> the output byte (int8 values through their two's-complement byte).
inline uint8_t finish(float y, const EwParams& p) {
  if (p.relu) y = y < 0.0f ? 0.0f : y;
  const float t = quantize_val(y, p.inv_out, static_cast<float>(p.out_zp),
                               static_cast<float>(p.qmin), static_cast<float>(p.qmax));
  return static_cast<uint8_t>(static_cast<int32_t>(t));
}

}  // namespace

void ew_binary__scalar(EwOp op, const void* a, int64_t sa, const void* b, int64_t sb, void* out,
                       int64_t so, int64_t n, const EwParams& p) {
  const auto* pa = static_cast<const uint8_t*>(a);
  const auto* pb = static_cast<const uint8_t*>(b);
  auto* po = static_cast<uint8_t*>(out);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t x = load(pa + i * sa, p.a_unsigned) - p.a_zp;
    const int32_t z = load(pb + i * sb, p.b_unsigned) - p.b_zp;
    const float y = op == EwOp::Add
                        ? static_cast<float>(x) * p.a_scale + static_cast<float>(z) * p.b_scale
                        : static_cast<float>(x * z) * p.m;
    po[i * so] = finish(y, p);
  }
}

void ew_unary__scalar(const void* a, int64_t sa, void* out, int64_t so, int64_t n,
                      const EwParams& p) {
  const auto* pa = static_cast<const uint8_t*>(a);
  auto* po = static_cast<uint8_t*>(out);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t x = load(pa + i * sa, p.a_unsigned) - p.a_zp;
    po[i * so] = finish(static_cast<float>(x) * p.m + p.c, p);
  }
}

void ew_binary_rows__scalar(EwOp op, const char* a, int64_t sa, int64_t a_row, const char* b, int64_t sb,
                            int64_t b_row, char* out, int64_t so, int64_t out_row, int64_t n, int64_t rows,
                            const EwParams& p) {
  for (int64_t r = 0; r < rows; ++r) {
    ew_binary__scalar(op, a + r * a_row, sa, b + r * b_row, sb, out + r * out_row, so, n, p);
  }
}

void ew_unary_rows__scalar(const char* a, int64_t sa, int64_t a_row, char* out, int64_t so, int64_t out_row,
                           int64_t n, int64_t rows, const EwParams& p) {
  for (int64_t r = 0; r < rows; ++r) ew_unary__scalar(a + r * a_row, sa, out + r * out_row, so, n, p);
}

void lookup_table__scalar(const uint8_t* a, const uint8_t* table, uint8_t* out, int64_t n, uint8_t flip) {
  for (int64_t i = 0; i < n; ++i) out[i] = table[a[i] ^ flip];
}

}  // namespace cpu
}  // namespace torchquant
