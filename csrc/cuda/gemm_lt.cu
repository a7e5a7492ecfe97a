// int8 x int8 -> int32 GEMM through cuBLASLt (IMMA tensor cores, CUBLAS_COMPUTE_32I).
//
// Row-major X [M, K] and W [N, K] are, read column-major, the "TN" problem cuBLASLt's IMMA
// kernels want: D^T [N, M] = (W as K x N)^T * (X as K x M), D stored row-major [M, ldd].
//
// The algorithm is chosen once per (device, shape, leading dimensions, pointer alignments): the heuristic's
// candidates are each timed on the real operands and the fastest is cached with its matmul and
// layout descriptors, so later calls cost one map lookup and one cublasLtMatmul. Timing needs
// one host synchronization, once per shape; under CUDA graph capture (where it is not allowed)
// the heuristic's first choice is used and not cached.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <cublasLt.h>

#include <mutex>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/gemm.cuh"

namespace torchquant {
namespace cuda {
namespace {

constexpr size_t kWorkspaceBytes = 64u << 20;  // some of the fastest IMMA algorithms want more than torch's 32 MB
constexpr int kCandidates = 8;

#define TQ_CUBLASLT_CHECK(expr)                                                               \
  do {                                                                                        \
    const cublasStatus_t st_ = (expr);                                                        \
    TORCH_CHECK(st_ == CUBLAS_STATUS_SUCCESS, "cuBLASLt call ", #expr, " failed with status ", \
                static_cast<int>(st_));                                                       \
  } while (0)

cublasLtHandle_t handle_for(int device) {
  // One handle per device for the life of the process: destroying it at exit could run after
  // the CUDA runtime has shut down. cuBLASLt handles may be shared between threads.
  constexpr int kMaxDevices = 64;
  static std::mutex mu;
  static cublasLtHandle_t handles[kMaxDevices] = {};
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "CUDA device index ", device, " out of range");
  std::lock_guard<std::mutex> lock(mu);
  if (handles[device] == nullptr) TQ_CUBLASLT_CHECK(cublasLtCreate(&handles[device]));
  return handles[device];
}

struct Plan {
  bool ok = false;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

struct Key {
  int64_t v[10];
  bool operator==(const Key& o) const {
    for (int i = 0; i < 10; ++i)
      if (v[i] != o.v[i]) return false;
    return true;
  }
};

// A flat list: a process sees few distinct GEMM shapes, and a linear scan of them costs less
// than the matmul it precedes.
struct Entry {
  Key key;
  Plan plan;
};

std::mutex& cache_mutex() {
  static std::mutex mu;
  return mu;
}
std::vector<Entry>& cache() {
  static std::vector<Entry> c;
  return c;
}

const Entry* find_entry(const Key& key) {
  for (const Entry& e : cache())
    if (e.key == key) return &e;
  return nullptr;
}

// The largest power of two up to 256 that divides the address. cuBLASLt's heuristic assumes
// 256-byte aligned operands unless told otherwise, and may return algorithms that fail on (or
// misread) an operand that is only 16-byte aligned, such as a row slice of an activation.
uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al >>= 1;
  return al;
}

void make_descriptors(Plan& plan, const GemmProblem& p, int64_t ldd) {
  TQ_CUBLASLT_CHECK(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32I, CUDA_R_32I));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  TQ_CUBLASLT_CHECK(
      cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  TQ_CUBLASLT_CHECK(
      cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  // Stored column-major: W is K x N (ld ldw), X is K x M (ld ldx), D is N x M (ld ldd).
  TQ_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_8I, p.Kp, p.N, p.ldw));
  TQ_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_8I, p.Kp, p.M, p.ldx));
  TQ_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan.d, CUDA_R_32I, p.N, p.M, ldd));
}

void destroy_descriptors(Plan& plan) {
  if (plan.d) cublasLtMatrixLayoutDestroy(plan.d);
  if (plan.b) cublasLtMatrixLayoutDestroy(plan.b);
  if (plan.a) cublasLtMatrixLayoutDestroy(plan.a);
  if (plan.op) cublasLtMatmulDescDestroy(plan.op);
  plan = Plan{};
}

cublasStatus_t run(cublasLtHandle_t h, const Plan& plan, const cublasLtMatmulAlgo_t& algo,
                   size_t ws_bytes, void* ws, const GemmProblem& p, int32_t* d,
                   cudaStream_t stream) {
  const int32_t alpha = 1, beta = 0;
  return cublasLtMatmul(h, plan.op, &alpha, p.w, plan.a, p.x, plan.b, &beta, d, plan.d, d,
                        plan.d, &algo, ws, ws_bytes, stream);
}

// Times each candidate (one warm-up, then the best of three) on the real operands; returns the
// index of the fastest one that ran, or -1.
int fastest(cublasLtHandle_t h, const Plan& plan, const cublasLtMatmulHeuristicResult_t* cands,
            int n_cands, void* ws,
            const GemmProblem& p, int32_t* d, cudaStream_t stream) {
  cudaEvent_t start, stop;
  C10_CUDA_CHECK(cudaEventCreate(&start));
  C10_CUDA_CHECK(cudaEventCreate(&stop));
  int best = -1;
  float best_ms = 0.0f;
  for (int i = 0; i < n_cands; ++i) {
    if (run(h, plan, cands[i].algo, cands[i].workspaceSize, ws, p, d, stream) !=
        CUBLAS_STATUS_SUCCESS) {
      continue;
    }
    float ms = -1.0f;
    for (int rep = 0; rep < 3; ++rep) {
      C10_CUDA_CHECK(cudaEventRecord(start, stream));
      const cublasStatus_t st = run(h, plan, cands[i].algo, cands[i].workspaceSize, ws, p, d, stream);
      C10_CUDA_CHECK(cudaEventRecord(stop, stream));
      C10_CUDA_CHECK(cudaEventSynchronize(stop));
      if (st != CUBLAS_STATUS_SUCCESS) {
        ms = -1.0f;
        break;
      }
      float t = 0.0f;
      C10_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
      ms = (ms < 0.0f || t < ms) ? t : ms;
    }
    if (ms >= 0.0f && (best < 0 || ms < best_ms)) {
      best = i;
      best_ms = ms;
    }
  }
  C10_CUDA_CHECK(cudaEventDestroy(start));
  C10_CUDA_CHECK(cudaEventDestroy(stop));
  return best;
}

}  // namespace

bool lt_gemm_s32(const GemmProblem& p, int32_t* d, int64_t ldd, cudaStream_t stream) {
  TORCH_CHECK(!p.x_xor, "internal: cuBLASLt path needs int8 activations");
  if (p.M == 0 || p.N == 0 || p.Kp == 0) return false;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const cublasLtHandle_t h = handle_for(device);
  // cuBLASLt's A is W, B is X, C and D are d.
  const uint32_t align_a = alignment_of(p.w), align_b = alignment_of(p.x), align_d = alignment_of(d);
  const Key key{{device, p.M, p.N, p.Kp, p.ldx, p.ldw, ldd, align_a, align_b, align_d}};
  bool cached = false;
  Plan hit;  // descriptors are immutable once cached: a copy of the handles is safe to use
  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    if (const Entry* found = find_entry(key)) {
      cached = true;
      hit = found->plan;
    }
  }
  if (cached) {
    if (!hit.ok) return false;
    at::Tensor ws = at::empty({static_cast<int64_t>(hit.workspace)},
                              at::TensorOptions().dtype(at::kByte).device(at::kCUDA, device));
    TQ_CUBLASLT_CHECK(run(h, hit, hit.algo, hit.workspace, ws.data_ptr(), p, d, stream));
    return true;
  }

  Plan plan;
  make_descriptors(plan, p, ldd);
  cublasLtMatmulPreference_t pref = nullptr;
  TQ_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t max_ws = kWorkspaceBytes;
  TQ_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws, sizeof(max_ws)));
  TQ_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
  TQ_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
  TQ_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof(align_d)));
  TQ_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof(align_d)));
  cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
  int count = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(
      h, plan.op, plan.a, plan.b, plan.d, plan.d, pref, kCandidates, results, &count);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatmulHeuristicResult_t cands[kCandidates];
  int n_cands = 0;
  if (hs == CUBLAS_STATUS_SUCCESS) {
    for (int i = 0; i < count && i < kCandidates; ++i) {
      if (results[i].state == CUBLAS_STATUS_SUCCESS) cands[n_cands++] = results[i];
    }
  }

  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;

  bool launched = false;
  if (n_cands > 0) {
    size_t ws_bytes = 0;
    for (int i = 0; i < n_cands; ++i)
      ws_bytes = cands[i].workspaceSize > ws_bytes ? cands[i].workspaceSize : ws_bytes;
    at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)},
                              at::TensorOptions().dtype(at::kByte).device(at::kCUDA, device));
    const int best =
        (capturing || n_cands == 1) ? 0 : fastest(h, plan, cands, n_cands, ws.data_ptr(), p, d, stream);
    if (best >= 0) {
      plan.ok = true;
      plan.algo = cands[best].algo;
      plan.workspace = cands[best].workspaceSize;
      // The timed runs already wrote D, but the result must come from a launch that is ordered
      // like any other: run the chosen algorithm once more.
      TQ_CUBLASLT_CHECK(run(h, plan, plan.algo, plan.workspace, ws.data_ptr(), p, d, stream));
      launched = true;
    }
  }
  if (capturing) {
    destroy_descriptors(plan);  // not cached: an uncaptured call will time the candidates
    return launched;
  }
  if (!plan.ok) destroy_descriptors(plan);
  std::lock_guard<std::mutex> lock(cache_mutex());
  if (find_entry(key) != nullptr) {
    if (plan.ok) destroy_descriptors(plan);  // another thread got there first
  } else {
    cache().push_back(Entry{key, plan});
  }
  return launched;
}

}  // namespace cuda
}  // namespace torchquant
