// A whole recurrent layer (one direction, padded input) as one op: the time loop of
// torchquant.nn.quantized.dynamic.LSTM / GRU in C++. Each step is the same two or three op
// calls the Python loop made (linear_dynamic on the hidden state, the fused cell update, the
// LSTM projection), called through the dispatcher, so every device's kernels serve it and the
// results are bit-identical to the step-by-step loop. What it removes is the interpreter and
// the per-call boxing of the Python loop: at batch 1 a step's arithmetic (a 4H x H int8 GEMV)
// takes about as long as that overhead did.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "ops.h"

namespace torchquant {
namespace {

using LinearDynamicFn = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                               const std::optional<Tensor>&, bool, bool);

const c10::TypedOperatorHandle<LinearDynamicFn>& linear_dynamic_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("torchquant::linear_dynamic", "")
                             .typed<LinearDynamicFn>();
  return op;
}

using LstmCellFn = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&);
using GruCellFn = Tensor(const Tensor&, const Tensor&, const Tensor&);

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

// The layer's own arguments, checked before the time loop (so that an empty sequence checks
// them too, and a fault is named as the layer's argument, not as one step's). H: the cell's
// units (c0's for an LSTM, h0's for a GRU); h0 holds the projection's P units where an LSTM has
// one. Every float tensor is float32 on igates' device, as the cell update needs.
void check_layer_args(const Tensor& igates, const Tensor& h0, const Tensor* c0, int64_t gates,
                      const Tensor& hh_col_sums, const Tensor& hh_scale,
                      const std::optional<Tensor>& hr_col_sums, const char* op) {
  TORCH_CHECK(igates.dim() == 3, op, ": argument 'igates' must be 3-D [time, batch, ", gates,
              " * hidden], got shape ", igates.sizes());
  TORCH_CHECK(h0.dim() == 2, op, ": argument 'h0' must be 2-D [batch, hidden], got shape ", h0.sizes());
  if (c0 != nullptr)
    TORCH_CHECK(c0->dim() == 2, op, ": argument 'c0' must be 2-D [batch, hidden], got shape ", c0->sizes());
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&igates, "igates"},
                                {&h0, "h0"},
                                {c0, "c0"}}) {
    if (t == nullptr) continue;
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": argument '", name, "' must be a float32 tensor, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == igates.device(), op, ": argument '", name, "' is on ", t->device(),
                " but 'igates' is on ", igates.device(), "; they must be on the same device");
  }
  const int64_t B = igates.size(1);
  TORCH_CHECK(h0.size(0) == B, op, ": argument 'igates' has batch ", B, " but 'h0' has batch ", h0.size(0));
  if (c0 != nullptr)
    TORCH_CHECK(c0->size(0) == B, op, ": argument 'igates' has batch ", B, " but 'c0' has batch ", c0->size(0));
  const int64_t H = c0 != nullptr ? c0->size(1) : h0.size(1);
  const bool proj = hr_col_sums.has_value();
  if (c0 != nullptr && !proj)
    TORCH_CHECK(h0.size(1) == H, op, ": arguments 'h0' and 'c0' must have the same hidden size without a "
                "projection, got ", h0.size(1), " and ", H);
  if (proj)
    TORCH_CHECK(hr_col_sums->numel() == h0.size(1), op, ": argument 'hr_col_sums' has ", hr_col_sums->numel(),
                " elements but 'h0' has ", h0.size(1), " units (the projection's outputs)");
  TORCH_CHECK(igates.size(2) == gates * H, op, ": argument 'igates' must have ", gates * H, " features (",
              gates, " gates of the ", H, " units of '", c0 != nullptr ? "c0" : "h0", "'), got shape ",
              igates.sizes());
  TORCH_CHECK(hh_col_sums.numel() == gates * H && hh_scale.numel() == gates * H, op,
              ": arguments 'hh_col_sums' and 'hh_scale' must have ", gates * H, " elements (", gates,
              " gates of ", H, " units), got ", hh_col_sums.numel(), " and ", hh_scale.numel());
}

// A layer's weights for one linear_dynamic (the recurrent 'hh_*' or the projection 'hr_*'),
// checked before the loop by linear_dynamic itself on an empty batch of K inputs (which returns
// after its checks): a sequence of length 0 checks them too, and a fault names the layer's
// arguments, with linear_dynamic's own message after them.
void check_step_weights(const Tensor& like, int64_t K, const Tensor& w, const Tensor& col_sums,
                        const Tensor& scale, const std::optional<Tensor>& bias, bool reduce_range,
                        const char* op, const char* names, const char* of) {
  try {
    linear_dynamic_op().call(at::empty({0, K}, like.options()), w, col_sums, scale, bias, false,
                             reduce_range);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, op, ": arguments ", names, " (linear_dynamic's 'w_packed', 'w_col_sums', 'w_scale'",
                bias.has_value() ? ", 'bias'" : "", ", applied to the ", K, " units of ", of,
                ") were refused: ", e.what_without_backtrace());
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> lstm_layer_dynamic(
    const Tensor& igates, const Tensor& h0, const Tensor& c0, const Tensor& hh_w,
    const Tensor& hh_col_sums, const Tensor& hh_scale, const std::optional<Tensor>& hh_bias,
    const std::optional<Tensor>& hr_w, const std::optional<Tensor>& hr_col_sums,
    const std::optional<Tensor>& hr_scale, bool reverse, bool reduce_range) {
  const bool proj = hr_w.has_value();
  TORCH_CHECK(proj == hr_col_sums.has_value() && proj == hr_scale.has_value(),
              "lstm_layer_dynamic: arguments 'hr_w', 'hr_col_sums' and 'hr_scale' must be given "
              "together or not at all");
  check_layer_args(igates, h0, &c0, 4, hh_col_sums, hh_scale, hr_col_sums, "lstm_layer_dynamic");
  check_step_weights(h0, h0.size(1), hh_w, hh_col_sums, hh_scale, hh_bias, reduce_range, "lstm_layer_dynamic",
                     "'hh_w', 'hh_col_sums', 'hh_scale', 'hh_bias'", "'h0'");
  if (proj)
    check_step_weights(h0, c0.size(1), *hr_w, *hr_col_sums, *hr_scale, std::nullopt, reduce_range,
                       "lstm_layer_dynamic", "'hr_w', 'hr_col_sums', 'hr_scale'", "'c0'");
  const auto& linear = linear_dynamic_op();
  static const auto cell = find_op<LstmCellFn>("torchquant::lstm_cell_update");
  const std::optional<Tensor> no_bias;
  const int64_t T = igates.size(0);
  Tensor out = at::empty({T, h0.size(0), h0.size(1)}, h0.options());
  Tensor h = h0, c = c0;
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    const Tensor hg = linear.call(h, hh_w, hh_col_sums, hh_scale, hh_bias, false, reduce_range);
    std::tie(h, c) = cell.call(igates.select(0, t), hg, c);
    if (proj) h = linear.call(h, *hr_w, *hr_col_sums, *hr_scale, no_bias, false, reduce_range);
    out.select(0, t).copy_(h);
  }
  // An op's outputs may not alias its inputs (T = 0 would return h0 and c0 themselves).
  if (T == 0) return {out, h0.clone(), c0.clone()};
  return {out, h, c};
}

std::tuple<Tensor, Tensor> gru_layer_dynamic(const Tensor& igates, const Tensor& h0,
                                             const Tensor& hh_w, const Tensor& hh_col_sums,
                                             const Tensor& hh_scale,
                                             const std::optional<Tensor>& hh_bias, bool reverse,
                                             bool reduce_range) {
  check_layer_args(igates, h0, nullptr, 3, hh_col_sums, hh_scale, std::nullopt, "gru_layer_dynamic");
  check_step_weights(h0, h0.size(1), hh_w, hh_col_sums, hh_scale, hh_bias, reduce_range, "gru_layer_dynamic",
                     "'hh_w', 'hh_col_sums', 'hh_scale', 'hh_bias'", "'h0'");
  const auto& linear = linear_dynamic_op();
  static const auto cell = find_op<GruCellFn>("torchquant::gru_cell_update");
  const int64_t T = igates.size(0);
  Tensor out = at::empty({T, h0.size(0), h0.size(1)}, h0.options());
  Tensor h = h0;
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    const Tensor hg = linear.call(h, hh_w, hh_col_sums, hh_scale, hh_bias, false, reduce_range);
    h = cell.call(igates.select(0, t), hg, h);
    out.select(0, t).copy_(h);
  }
  if (T == 0) return {out, h0.clone()};
  return {out, h};
}

TORCH_LIBRARY_IMPL(torchquant, CompositeExplicitAutograd, m) {
  m.impl("lstm_layer_dynamic", &lstm_layer_dynamic);
  m.impl("gru_layer_dynamic", &gru_layer_dynamic);
}

}  // namespace torchquant
