// CPU adapters of the fused recurrent-cell updates (lstm_cell_update, gru_cell_update):
// argument checks, threads over batch rows, choice of kernel variant. The kernels are in
// rnn_scalar.cpp and rnn_avx2.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "cpu/rnn_kernels.h"
#include "ops.h"

namespace torchquant {
namespace {

// Units per task: a thread wake-up costs about as much as updating this many units.
constexpr int64_t kUnitsPerTask = 8192;

}  // namespace

// Shared with the CUDA adapters: the argument checks of both ops. Returns (B, H).
std::pair<int64_t, int64_t> check_cell_update_args(const Tensor& igates, const Tensor& hgates,
                                                   const Tensor& state, int64_t gates,
                                                   const char* state_name, const char* op) {
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{igates, "igates"},
                                {hgates, "hgates"},
                                {state, state_name}}) {
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": argument '", name,
                "' must be a float32 tensor, got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 2, op, ": argument '", name, "' must be 2-D [batch, features], got shape ",
                t.sizes());
    TORCH_CHECK(t.device() == igates.device(), op, ": argument '", name, "' is on ", t.device(),
                " but 'igates' is on ", igates.device(), "; they must be on the same device");
  }
  const int64_t B = state.size(0), H = state.size(1);
  TORCH_CHECK(igates.size(0) == B && igates.size(1) == gates * H, op,
              ": argument 'igates' must have shape [", B, ", ", gates * H, "] (", gates,
              " gates of the ", H, " units of '", state_name, "'), got ", igates.sizes());
  TORCH_CHECK(hgates.sizes() == igates.sizes(), op, ": argument 'hgates' must have the shape of igates ",
              igates.sizes(), ", got ", hgates.sizes());
  return {B, H};
}

std::tuple<Tensor, Tensor> lstm_cell_update_cpu(const Tensor& igates, const Tensor& hgates,
                                                const Tensor& c) {
  const auto [B, H] = check_cell_update_args(igates, hgates, c, 4, "c", "lstm_cell_update");
  const Tensor ig = igates.contiguous(), hg = hgates.contiguous(), cx = c.contiguous();
  Tensor h_out = at::empty({B, H}, c.options().memory_format(at::MemoryFormat::Contiguous));
  Tensor c_out = at::empty({B, H}, c.options().memory_format(at::MemoryFormat::Contiguous));
  if (B == 0 || H == 0) return {h_out, c_out};
  const auto kernel = cpu_isa() == CpuIsa::Scalar ? cpu::lstm_cell_row__scalar : cpu::lstm_cell_row__avx2;
  const float* pig = ig.data_ptr<float>();
  const float* phg = hg.data_ptr<float>();
  const float* pc = cx.data_ptr<float>();
  float* ph = h_out.data_ptr<float>();
  float* pco = c_out.data_ptr<float>();
  at::parallel_for(0, B, std::max<int64_t>(1, kUnitsPerTask / H), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      kernel(pig + r * 4 * H, phg + r * 4 * H, pc + r * H, ph + r * H, pco + r * H, H);
  });
  return {h_out, c_out};
}

Tensor gru_cell_update_cpu(const Tensor& igates, const Tensor& hgates, const Tensor& h) {
  const auto [B, H] = check_cell_update_args(igates, hgates, h, 3, "h", "gru_cell_update");
  const Tensor ig = igates.contiguous(), hg = hgates.contiguous(), hx = h.contiguous();
  Tensor h_out = at::empty({B, H}, h.options().memory_format(at::MemoryFormat::Contiguous));
  if (B == 0 || H == 0) return h_out;
  const auto kernel = cpu_isa() == CpuIsa::Scalar ? cpu::gru_cell_row__scalar : cpu::gru_cell_row__avx2;
  const float* pig = ig.data_ptr<float>();
  const float* phg = hg.data_ptr<float>();
  const float* ph = hx.data_ptr<float>();
  float* po = h_out.data_ptr<float>();
  at::parallel_for(0, B, std::max<int64_t>(1, kUnitsPerTask / H), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) kernel(pig + r * 3 * H, phg + r * 3 * H, ph + r * H, po + r * H, H);
  });
  return h_out;
}

TORCH_LIBRARY_IMPL(torchquant, CPU, m) {
  m.impl("lstm_cell_update", &lstm_cell_update_cpu);
  m.impl("gru_cell_update", &gru_cell_update_cpu);
}

}  // namespace torchquant
