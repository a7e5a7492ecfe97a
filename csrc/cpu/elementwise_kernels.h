// Raw-pointer kernels for the quantized elementwise ops (add, mul, add_scalar, mul_scalar and
// cat's requantize), declared together for every ISA so that dispatch and tests can swap them.
//
// Every element goes through the same float32 steps (docs/quantization.md, "Elementwise ops"):
//   add:    y = float(a - a_zp) * a_scale + float(b - b_zp) * b_scale
//   mul:    y = float((a - a_zp) * (b - b_zp)) * m,      m = float32(a_scale * b_scale)
//   unary:  y = float(a - a_zp) * m + c                 (add_scalar, mul_scalar, requantize)
// then y = max(y, 0) when relu is set, then the quantize formula of common/quant_math.h with
// 1 / out_scale, out_zp and [qmin, qmax].
//
// Strides are in elements (the data is 8-bit, so also in bytes) and may be 0 (a broadcast
// operand). The SIMD variants take the vector path for input strides 0 or 1 and output stride
// 1, and hand any other stride to the scalar oracle.
#pragma once

#include <cstdint>

namespace torchquant {
namespace cpu {

struct EwParams {
  float a_scale = 1.0f, b_scale = 1.0f;  // add
  float m = 1.0f;                        // mul: float32(a_scale * b_scale); unary: the multiplier
  float c = 0.0f;                        // unary: the addend
  float inv_out = 1.0f;                  // 1.0f / out_scale
  int32_t a_zp = 0, b_zp = 0, out_zp = 0, qmin = 0, qmax = 255;
  bool a_unsigned = true, b_unsigned = true, out_unsigned = true;  // uint8 or int8 storage
  bool relu = false;
};

enum class EwOp : int { Add = 0, Mul = 1 };

// The _rows forms run `rows` such rows, row r at byte offsets r * a_row / b_row / out_row (a
// TensorIterator's 2-D loop), with the per-call setup done once.
#define TQ_DECLARE_EW_KERNELS(SUFFIX)                                                          \
  void ew_binary__##SUFFIX(EwOp op, const void* a, int64_t sa, const void* b, int64_t sb,    \
                           void* out, int64_t so, int64_t n, const EwParams& p);             \
  void ew_unary__##SUFFIX(const void* a, int64_t sa, void* out, int64_t so, int64_t n,       \
                          const EwParams& p);                                                \
  void ew_binary_rows__##SUFFIX(EwOp op, const char* a, int64_t sa, int64_t a_row,           \
                                const char* b, int64_t sb, int64_t b_row, char* out,         \
                                int64_t so, int64_t out_row, int64_t n, int64_t rows,        \
                                const EwParams& p);                                          \
  void ew_unary_rows__##SUFFIX(const char* a, int64_t sa, int64_t a_row, char* out,          \
                               int64_t so, int64_t out_row, int64_t n, int64_t rows,         \
                               const EwParams& p);

TQ_DECLARE_EW_KERNELS(scalar)
TQ_DECLARE_EW_KERNELS(avx2)

#undef TQ_DECLARE_EW_KERNELS

// lookup_table: out[i] = table[a[i] ^ flip] for n contiguous bytes (flip 0x80 turns an int8
// code into its table index, 0 for uint8). The scalar loop is the oracle; the AVX2 one selects
// among sixteen 16-byte slices of the table with vpshufb; the AVX-512 one (CPUs with VBMI) picks
// from 128 bytes per vpermi2b, two of them and a blend on the index's top bit.
void lookup_table__scalar(const uint8_t* a, const uint8_t* table, uint8_t* out, int64_t n, uint8_t flip);
void lookup_table__avx2(const uint8_t* a, const uint8_t* table, uint8_t* out, int64_t n, uint8_t flip);
void lookup_table__avx512vbmi(const uint8_t* a, const uint8_t* table, uint8_t* out, int64_t n, uint8_t flip);
// Whether this CPU runs lookup_table__avx512vbmi.
bool cpu_has_avx512vbmi();

}  // namespace cpu
}  // namespace torchquant
