// The record at the end of a packed CPU convolution weight (pack_conv_weight,
// pack_conv_transpose_weight): the packed tensor is 1-D, its panels and then 32 bytes of int32
// that say which weight it was packed from: a tag naming the packer, the input channels per
// group, the kernel's KD, KH and KW, groups and the output channels. The size of the panels
// alone cannot tell some weights apart (3 and 4 input channels of a 3-wide kernel whose rows are
// padded to 12 bytes, a 3 x 1 and a 1 x 3 kernel, 2 taps of 8 output channels and 4 of 4): the
// ops compare the record with what x, kernel_size and groups call for.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <cstring>

namespace torchquant::cpu {

constexpr int64_t kRecordInts = 8;
constexpr int64_t kRecordBytes = kRecordInts * 4;
constexpr int32_t kConvRecordTag = 0x57435154;           // "TQCW"
constexpr int32_t kConvTransposeRecordTag = 0x54435154;  // "TQCT"

using PackedRecord = std::array<int32_t, kRecordInts>;

inline PackedRecord packed_record(int32_t tag, int64_t Cg, const int64_t* k, int64_t groups, int64_t Cout) {
  return {tag, static_cast<int32_t>(Cg), static_cast<int32_t>(k[0]), static_cast<int32_t>(k[1]),
          static_cast<int32_t>(k[2]), static_cast<int32_t>(groups), static_cast<int32_t>(Cout), 0};
}

// Writes r after the body bytes of packed.
inline void write_packed_record(at::Tensor& packed, int64_t body, const PackedRecord& r) {
  std::memcpy(packed.data_ptr<int8_t>() + body, r.data(), kRecordBytes);
}

// w_packed (a contiguous int8 tensor) must be 1-D, of body + kRecordBytes bytes, and end in
// `want`. `packer` names the op, `layout` the body's size formula for the message.
inline void check_packed_record(const at::Tensor& w_packed, int64_t body, const PackedRecord& want,
                                const char* packer, const char* layout) {
  TORCH_CHECK(w_packed.dim() == 1 && w_packed.size(0) == body + kRecordBytes, "argument 'w_packed' must be 1-D, of ",
              layout, " + ", kRecordBytes, " = ", body + kRecordBytes,
              " bytes for this input, kernel_size and groups (", packer, " on the CPU), got shape ", w_packed.sizes());
  PackedRecord got;
  std::memcpy(got.data(), w_packed.const_data_ptr<int8_t>() + body, kRecordBytes);
  TORCH_CHECK(got[0] == want[0], "argument 'w_packed' is not a weight from ", packer, " on the CPU");
  TORCH_CHECK(got == want, "argument 'w_packed' was packed from a weight with Cin/groups=", got[1], ", kernel (kD, kH, kW)=(",
              got[2], ", ", got[3], ", ", got[4], "), groups=", got[5], ", Cout=", got[6],
              ", but x, kernel_size and groups call for Cin/groups=", want[1], ", kernel (", want[2], ", ", want[3],
              ", ", want[4], "), groups=", want[5], ", Cout=", want[6]);
}

}  // namespace torchquant::cpu
