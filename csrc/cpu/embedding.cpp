// CPU adapter of the row-wise quantized embedding bag (embedding_bag_rowwise): argument checks
// (every index and offset, before any row is read), bags split over threads, choice of kernel
// variant. The kernels are in embedding_scalar.cpp, embedding_avx2.cpp and embedding_avx512.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/embedding_kernels.h"
#include "cpu/isa.h"
#include "ops.h"

namespace torchquant {

int64_t embedding_row_stride(int64_t dim, int64_t bits) {
  const int64_t data = (dim * bits + 7) / 8;
  return (data + 3) / 4 * 4 + 8;
}

EmbeddingBagArgs check_embedding_bag_args(const Tensor& packed, int64_t bits, int64_t dim,
                                          const Tensor& indices,
                                          const std::optional<Tensor>& offsets, int64_t mode,
                                          const std::optional<Tensor>& per_sample_weights,
                                          bool include_last_offset,
                                          std::optional<int64_t> padding_idx) {
  const char* op = "embedding_bag_rowwise";
  TORCH_CHECK(bits == 8 || bits == 4, op, ": argument 'bits' must be 8 or 4, got ", bits);
  TORCH_CHECK(dim >= 0, op, ": argument 'embedding_dim' must be >= 0, got ", dim);
  TORCH_CHECK(mode >= 0 && mode <= 2, op, ": argument 'mode' must be 0 (sum), 1 (mean) or 2 (max), got ",
              mode);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 2, op,
              ": argument 'packed' must be a 2-D uint8 tensor, got ", packed.scalar_type(), " ",
              packed.sizes());
  const int64_t stride = embedding_row_stride(dim, bits);
  TORCH_CHECK(packed.size(1) == stride, op, ": argument 'packed' has rows of ", packed.size(1),
              " bytes, but ", bits, "-bit rows of embedding_dim=", dim, " take ", stride,
              " (values, then float32 scale and zero point)");
  const int64_t N = packed.size(0);
  TORCH_CHECK(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt, op,
              ": argument 'indices' must be an int64 or int32 tensor, got ", indices.scalar_type());
  TORCH_CHECK(indices.device() == packed.device(), op, ": argument 'indices' is on ", indices.device(),
              " but 'packed' is on ", packed.device(), "; they must be on the same device");
  EmbeddingBagArgs a;
  a.N = N;
  a.row_stride = stride;
  if (offsets.has_value()) {
    TORCH_CHECK(indices.dim() == 1, op, ": argument 'indices' must be 1-D when offsets are given, got shape ",
                indices.sizes());
    const Tensor& o = *offsets;
    TORCH_CHECK(o.scalar_type() == at::kLong || o.scalar_type() == at::kInt, op,
                ": argument 'offsets' must be an int64 or int32 tensor, got ", o.scalar_type());
    TORCH_CHECK(o.dim() == 1, op, ": argument 'offsets' must be 1-D, got shape ", o.sizes());
    TORCH_CHECK(o.device() == packed.device(), op, ": argument 'offsets' is on ", o.device(),
                " but 'packed' is on ", packed.device(), "; they must be on the same device");
    TORCH_CHECK(!include_last_offset || o.numel() >= 1, op,
                ": argument 'offsets' must hold at least one element with include_last_offset=True");
    a.bags = include_last_offset ? o.numel() - 1 : o.numel();
  } else {
    TORCH_CHECK(indices.dim() == 2, op,
                ": argument 'indices' must be 2-D [bags, entries] when no offsets are given, got shape ",
                indices.sizes());
    a.bags = indices.size(0);
  }
  a.n = indices.numel();
  if (per_sample_weights.has_value()) {
    const Tensor& w = *per_sample_weights;
    TORCH_CHECK(mode == 0, op, ": per_sample_weights was not None. per_sample_weights is only supported for "
                "mode='sum' (got mode='", mode == 1 ? "mean" : "max", "'). Please open a feature request on "
                "GitHub.");
    TORCH_CHECK(w.scalar_type() == at::kFloat, op,
                ": argument 'per_sample_weights' must be a float32 tensor, got ", w.scalar_type());
    TORCH_CHECK(w.sizes() == indices.sizes(), op,
                ": argument 'per_sample_weights' must have the shape of indices ", indices.sizes(), ", got ",
                w.sizes());
    TORCH_CHECK(w.device() == packed.device(), op, ": argument 'per_sample_weights' is on ", w.device(),
                " but 'packed' is on ", packed.device(), "; they must be on the same device");
  }
  a.padding_idx = -1;
  if (padding_idx.has_value()) {
    TORCH_CHECK(*padding_idx >= 0 && *padding_idx < N, op, ": argument 'padding_idx' must lie in [0, ", N,
                ") (the table's rows), got ", *padding_idx);
    a.padding_idx = *padding_idx;
  }
  return a;
}

void check_embedding_bag_values(const int64_t* idx, int64_t n, const int64_t* off, int64_t n_off,
                                int64_t N) {
  // One branch-free pass (as an unsigned value, a negative index is out of range too); the
  // position is looked for only on the error path.
  uint64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint64_t>(idx[i] >= N) | static_cast<uint64_t>(idx[i] < 0);
  if (bad) {
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(idx[i] >= 0 && idx[i] < N, "embedding_bag_rowwise: argument 'indices' holds ", idx[i],
                  " at position ", i, ", outside [0, ", N, ") (the table's rows)");
    }
  }
  if (off == nullptr) return;
  TORCH_CHECK(n_off == 0 || off[0] == 0, "embedding_bag_rowwise: offsets[0] has to be 0, i.e., the first "
              "sequence in the mini-batch has to start from position 0. However, got ", off[0]);
  for (int64_t b = 1; b < n_off; ++b) {
    TORCH_CHECK(off[b] >= off[b - 1], "embedding_bag_rowwise: argument 'offsets' must be non-decreasing, "
                "got offsets[", b - 1, "]=", off[b - 1], " > offsets[", b, "]=", off[b]);
  }
  TORCH_CHECK(n_off == 0 || off[n_off - 1] <= n, "embedding_bag_rowwise: argument 'offsets' holds ",
              n_off ? off[n_off - 1] : 0, " at position ", n_off - 1, ", past the ", n, " indices");
}

Tensor embedding_bag_rowwise_cpu(const Tensor& packed, int64_t bits, int64_t embedding_dim,
                                 const Tensor& indices, const std::optional<Tensor>& offsets,
                                 int64_t mode, const std::optional<Tensor>& per_sample_weights,
                                 bool include_last_offset, std::optional<int64_t> padding_idx) {
  const EmbeddingBagArgs a = check_embedding_bag_args(packed, bits, embedding_dim, indices, offsets, mode,
                                                      per_sample_weights, include_last_offset, padding_idx);
  const Tensor idx = indices.to(at::kLong).contiguous();
  const int64_t* pi = idx.data_ptr<int64_t>();
  Tensor off;
  const int64_t* po = nullptr;
  if (offsets.has_value()) {
    off = offsets->to(at::kLong).contiguous();
    po = off.data_ptr<int64_t>();
  }
  check_embedding_bag_values(pi, a.n, po, po ? off.numel() : 0, a.N);
  Tensor out = at::empty({a.bags, embedding_dim}, packed.options().dtype(at::kFloat));
  if (a.bags == 0 || embedding_dim == 0) return out;
  const Tensor table = packed.contiguous();
  Tensor w;
  const float* pw = nullptr;
  if (per_sample_weights.has_value()) {
    w = per_sample_weights->contiguous();
    pw = w.data_ptr<float>();
  }
  cpu::EmbeddingTable t;
  t.data = table.data_ptr<uint8_t>();
  t.row_stride = a.row_stride;
  t.qparams_offset = a.row_stride - 8;
  t.dim = embedding_dim;
  t.bits = static_cast<int>(bits);
  const CpuIsa isa = cpu_isa();
  const auto kernel = isa == CpuIsa::Scalar ? cpu::embedding_bag__scalar
                      : isa == CpuIsa::Avx2 ? cpu::embedding_bag__avx2
                                            : cpu::embedding_bag__avx512;
  const auto bag_mode = static_cast<cpu::BagMode>(mode);
  const int64_t fixed = po ? 0 : (a.bags ? a.n / a.bags : 0);
  const int64_t n_off = po ? off.numel() : 0;
  float* pout = out.data_ptr<float>();
  const int64_t per_bag = std::max<int64_t>(1, a.bags ? a.n / a.bags : 1);
  const int64_t grain = std::max<int64_t>(1, 2048 / (per_bag * std::max<int64_t>(1, embedding_dim / 16)));
  at::parallel_for(0, a.bags, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t s, e;
      if (po) {
        s = po[b];
        e = b + 1 < n_off ? po[b + 1] : a.n;
      } else {
        s = b * fixed;
        e = s + fixed;
      }
      kernel(t, pi + s, e - s, pw ? pw + s : nullptr, a.padding_idx, bag_mode, pout + b * embedding_dim);
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(torchquant, CPU, m) { m.impl("embedding_bag_rowwise", &embedding_bag_rowwise_cpu); }

}  // namespace torchquant
