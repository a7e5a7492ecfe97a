// CPU adapter of the row-wise quantized embedding bag (embedding_bag_rowwise): argument checks
// (the offsets here, each bag's indices by the kernels before they read its rows), bags split
// over threads by their numbers of indices, choice of kernel variant. The kernels are in
// embedding_scalar.cpp, embedding_avx2.cpp and embedding_avx512.cpp.
#include <algorithm>
#include <atomic>

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
  // (bounded before dim * bits, which would overflow int64 past 2^60)
  TORCH_CHECK(dim >= 0 && dim <= (int64_t{1} << 40), op, ": argument 'embedding_dim' must lie in [0, 2^40], got ",
              dim);
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

void check_embedding_bag_indices(const int64_t* idx, int64_t n, int64_t N) {
  if (cpu::first_bad_index(idx, n, N) < 0) return;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(idx[i] >= 0 && idx[i] < N, "embedding_bag_rowwise: argument 'indices' holds ", idx[i],
                " at position ", i, ", outside [0, ", N, ") (the table's rows)");
  }
}

void check_embedding_bag_offsets(const int64_t* off, int64_t n_off, int64_t n) {
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

void check_embedding_bag_values(const int64_t* idx, int64_t n, const int64_t* off, int64_t n_off,
                                int64_t N) {
  // (the offsets first, as the CPU op checks them: the same error where both are bad)
  check_embedding_bag_offsets(off, n_off, n);
  check_embedding_bag_indices(idx, n, N);
}

namespace {

// Below this many row-vector operations (lookups x 16-column vectors; 1 to 2 ns each) a thread
// of its own costs more than it saves: starting a parallel region and waiting for its threads
// takes microseconds on an idle machine and far more on a loaded one.
constexpr int64_t kMinWorkPerThread = int64_t{1} << 12;

}  // namespace

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
  const int64_t n_off = po ? off.numel() : 0;
  // The offsets here; the indices each kernel checks, bag by bag, before it reads their rows.
  // Indices past the last bag (include_last_offset) belong to none, and are checked here.
  check_embedding_bag_offsets(po, n_off, a.n);
  const int64_t covered = po ? (a.bags > 0 ? (a.bags < n_off ? po[a.bags] : a.n) : 0) : a.n;
  if (cpu::first_bad_index(pi + covered, a.n - covered, a.N) >= 0) check_embedding_bag_indices(pi, a.n, a.N);
  Tensor out = at::empty({a.bags, embedding_dim}, packed.options().dtype(at::kFloat));
  if (a.bags == 0) return out;
  if (embedding_dim == 0) {
    check_embedding_bag_indices(pi, a.n, a.N);
    return out;
  }
  const Tensor table = packed.contiguous();
  Tensor w;
  cpu::EmbeddingBags b;
  if (per_sample_weights.has_value()) {
    w = per_sample_weights->contiguous();
    b.weights = w.data_ptr<float>();
  }
  cpu::EmbeddingTable t;
  t.data = table.data_ptr<uint8_t>();
  t.rows = a.N;
  t.row_stride = a.row_stride;
  t.qparams_offset = a.row_stride - 8;
  t.dim = embedding_dim;
  t.bits = static_cast<int>(bits);
  b.idx = pi;
  b.n = a.n;
  b.offsets = po;
  b.n_offsets = n_off;
  b.fixed = po ? 0 : a.n / a.bags;
  b.padding_idx = a.padding_idx;
  b.mode = static_cast<cpu::BagMode>(mode);
  b.out = out.data_ptr<float>();
  const CpuIsa isa = cpu_isa();
  const auto kernel = isa == CpuIsa::Scalar ? cpu::embedding_bags__scalar
                      : is_avx2_class(isa) ? cpu::embedding_bags__avx2
                                            : cpu::embedding_bags__avx512;
  // Threads get equal numbers of indices (not of bags, which may differ in size), and a small
  // problem runs on the calling thread without a parallel region.
  const int64_t work = (a.n + a.bags) * ((embedding_dim + 15) / 16);
  const int64_t parts = std::min<int64_t>({at::get_num_threads(), std::max<int64_t>(1, work / kMinWorkPerThread),
                                           a.bags});
  int64_t bad = -1;
  if (parts <= 1) {
    bad = kernel(t, b, 0, a.bags);
  } else {
    // First bag of part p: the first bag starting at or after index p * n / parts.
    const auto part_begin = [&](int64_t p) -> int64_t {
      if (p >= parts) return a.bags;
      if (!po) return p * a.bags / parts;
      const int64_t target = p * a.n / parts;
      return std::lower_bound(po, po + a.bags, target) - po;
    };
    std::atomic<int64_t> first_bad{-1};
    at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t r = kernel(t, b, part_begin(p), part_begin(p + 1));
        if (r >= 0) first_bad.store(r);
      }
    });
    bad = first_bad.load();
  }
  if (bad >= 0) {
    // The message names the first index out of range, wherever a kernel stopped.
    check_embedding_bag_indices(pi, a.n, a.N);
    TORCH_INTERNAL_ASSERT(false, "embedding_bag_rowwise: a kernel reported index position ", bad,
                          " out of range, the check found none");
  }
  return out;
}

TORCH_LIBRARY_IMPL(torchquant, CPU, m) { m.impl("embedding_bag_rowwise", &embedding_bag_rowwise_cpu); }

}  // namespace torchquant
