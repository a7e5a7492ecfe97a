// Raw-pointer kernels of the fused recurrent-cell updates, one signature set per ISA (scalar,
// avx2), declared together so that dispatch and tests can swap them freely.
//
// One call updates one batch row of H units from the two gate pre-activations the int8
// GEMMs produced (input projection `ig` and recurrent projection `hg`, biases included):
//   LSTM, gates [i | f | g | o] (4H floats each row, torch's order):
//     c' = sigmoid(f) * c + sigmoid(i) * tanh(g),  h' = sigmoid(o) * tanh(c')
//   GRU, gates [r | z | n] (3H floats each row, torch's order, hg includes b_hn):
//     r = sigmoid(ig_r + hg_r), z = sigmoid(ig_z + hg_z), n = tanh(ig_n + r * hg_n),
//     h' = (h - n) * z + n        (ATen's gru_cell order of operations)
// The additions and products round as written (no contraction); sigmoid and tanh are the
// only approximations: the scalar kernels use the C library's expf / tanhf, the AVX2 kernels
// Cephes-style polynomials (see docs/sequence.md for the bound against torch).
#pragma once

#include <cstdint>

namespace torchquant {
namespace cpu {

#define TQ_DECLARE_RNN_KERNELS(SUFFIX)                                                          \
  void lstm_cell_row__##SUFFIX(const float* ig, const float* hg, const float* c, float* h_out, \
                               float* c_out, int64_t H);                                       \
  void gru_cell_row__##SUFFIX(const float* ig, const float* hg, const float* h, float* h_out,  \
                              int64_t H);

TQ_DECLARE_RNN_KERNELS(scalar)
TQ_DECLARE_RNN_KERNELS(avx2)

#undef TQ_DECLARE_RNN_KERNELS

}  // namespace cpu
}  // namespace torchquant
